"""The embedded synthetic world: an impression log with known ground truth.

A seeded, fully vectorized simulator of a feed. Shapes: N items, U users, D latent dim, K categories,
A age buckets, S sessions (one slate each), L slate size, C policy candidates per session, P (user, item) pairs,
B requests.

**Items** (created in time order; row ``i`` of ``items.parquet`` is item index ``i``, id ``100000 + i``):
category ``c_i`` with Zipf sizes (P(c = k) ∝ (k+1)^-s), latent vector ``v_i = mu_{c_i} + spread * e_i``
(D,), quality ``q_i ~ N(0, 1)``, lognormal popularity ``log pop_i = sigma * (rho q_i + sqrt(1-rho^2) z_i)``,
creation time (a fraction exists before the log starts, the rest arrive uniformly over the span), and a price
(lognormal by category). **Links**: each item links to ``m`` earlier items chosen among candidates drawn with
probability ∝ ``(in-degree + a) * exp(w_q q_j)`` (preferential attachment, Barabási & Albert 1999, with initial
attractiveness ``a`` as in Dorogovtsev, Mendes & Samukhin 2000 and a fitness term as in Bianconi & Barabási
2001), a fraction of them from the same category, the ``m`` best by
``w_s cos(v_i, v_j) + Gumbel noise``; in-degrees are updated between blocks of items (a vectorized
approximation of the sequential process). PageRank of this graph is correlated with quality but also with age.
**Series** (franchises, creators): category k holds ``round(n_k / series_size)`` series, each item joins one of
its category's series uniformly, and each item also links to the previous ``series_links`` items of its series
(sequel links). Series are hidden: only their links are in the dataset. Off by default (``series_size = 0``);
e.g. ``recsys data synth --set series_size=6`` turns them on (the presets do not).

**Users**: age bucket, country, primary device, category mix ``theta_u ~ Dirichlet(conc * p_cat * exp(T[age]))``,
taste ``u_u = theta_u @ mu + spread * e_u`` drifting linearly: ``u_u(t) = u_u + delta_u * (t - t0) / span``,
lognormal activity (sessions per user) and lognormal price sensitivity ``s_u``; followed series ``F_u``:
``Poisson(fan_series)`` draws, each a category from ``theta_u`` and one of its series uniformly.

**Truth** (the oracle, :class:`Oracle`), with ``aff = u_u(t) . v_i`` and ``pz_i`` the standardized log price::

    logit P(click) = b_c + a_c aff + q_c q_i + f 1[series_i in F_u] - d log2(1 + position)
                     + h cos(2 pi (hour - peak) / 24) + dev
    logit P(like | click) = b_l + q_l q_i - p_l s_u pz_i + G[age_u, c_i] + a_l aff
    P(like) = P(click) P(like | click)
    EV(u, i, t) = P(click | position 0, neutral context) * (1 + P(like | click))    (-inf before creation)

Neutral context means no hour and no device effect (``dev`` is 0 for desktop). Position bias with log decay as
in the cascade/position-based click models (Craswell et al. 2008); the biases ``b_c``, ``b_l`` are calibrated on a
pilot log to hit ``target_ctr`` and ``target_like_given_click``.

**Logging policy** per session: C candidates from popularity (inverse-CDF sampling over the created prefix),
the user's categories (popularity-weighted, created items only), uniform exploration and the user's followed
series (a followed series, then one of its created items, uniformly: a "subscriptions" source); the slate is the
top L by ``u_u . v_i + w_p log pop_i + N(0, noise^2)`` (stale taste: no drift), ordered by that score.
Never O(U x N): sampling uses ``searchsorted`` on cumulative weights.

Files: the canonical dataset folder (:mod:`recsys.data.schema`) plus ``truth/`` with one ``.npy`` per array
(``np.load(..., allow_pickle=False)``) and ``world.json`` (config, seed, calibrated parameters).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from recsys.data.schema import Dataset, col, make_schema, write_dataset
from recsys.io import OutputExistsError, write_json

logger = logging.getLogger(__name__)

START_TS = 1704067200  # 2024-01-01T00:00:00Z
DAY = 86_400
ITEM_ID_OFFSET = 100_000
DEVICES = ("desktop", "mobile", "tablet")
DEVICE_P = (0.30, 0.60, 0.10)
AGE_BUCKETS = ("18-24", "25-34", "35-44", "45-54", "55+")
AGE_P = (0.15, 0.30, 0.25, 0.17, 0.13)
COUNTRIES = ("US", "IN", "BR", "DE", "GB", "FR", "JP", "MX", "ID", "NG", "CA", "ES", "IT", "KR", "AU")
WORLD_JSON = "world.json"
TRUTH_FORMAT = 2  # 2: series, followed series and the fan term of the click model

# truth/<name>.npy: name -> (dtype, description)
TRUTH_ARRAYS: dict[str, tuple[str, str]] = {
    "item_ids": ("int64", "(N,) external item ids, items.parquet row order"),
    "item_vec": ("float32", "(N, D) item latent vectors"),
    "item_quality": ("float32", "(N,) item quality q"),
    "item_log_pop": ("float32", "(N,) log popularity used by the logging policy"),
    "item_category": ("int32", "(N,) category index into world.json categories"),
    "item_created_at": ("int64", "(N,) creation time, Unix s"),
    "item_price_z": ("float32", "(N,) standardized log price"),
    "user_ids": ("int64", "(U,) external user ids, users.parquet row order"),
    "user_vec": ("float32", "(U, D) user taste at the start of the log"),
    "user_drift": ("float32", "(U, D) taste drift over the whole span"),
    "user_age": ("int32", "(U,) age bucket index into world.json age_buckets"),
    "user_price_sens": ("float32", "(U,) price sensitivity s"),
    "user_activity": ("float32", "(U,) relative session rate"),
    "like_age_category": ("float64", "(A, K) age bucket x category effect on like"),
    "item_series": ("int32", "(N,) series index of each item (0..S-1)"),
    "user_fan_indptr": ("int64", "(U+1,) CSR row pointers of the followed series per user"),
    "user_fan_series": ("int32", "(F,) followed series, sorted within each user (CSR indices)"),
}
SERIES_ARRAYS = ("item_series", "user_fan_indptr", "user_fan_series")  # new in truth format 2


# --------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """All knobs of the synthetic world (see the module docstring for the formulas)."""

    n_users: int = 20_000
    n_items: int = 5_000
    n_impressions: int = 1_000_000  # target; sessions = n_impressions // slate_size
    n_categories: int = 30
    dim: int = 16
    slate_size: int = 10
    days: int = 60
    start_ts: int = START_TS
    # items
    category_zipf: float = 1.0
    initial_item_fraction: float = 0.5  # created before start_ts (over prehistory_days); the rest arrive later
    prehistory_days: int = 365
    item_spread: float = 0.8
    popularity_sigma: float = 1.2
    popularity_quality_corr: float = 0.5
    price_log_mean: float = 3.4
    price_log_std_category: float = 0.7
    price_log_std_item: float = 0.5
    # link graph
    links_per_item: int = 4
    link_candidates: int = 16
    link_same_category: float = 0.5
    link_quality_weight: float = 1.5
    link_degree_offset: float = 10.0  # attachment weight (in-degree + offset) * exp(link_quality_weight * q)
    link_similarity_weight: float = 4.0
    link_blocks: int = 50
    # series (franchises / creators): hidden groups of items within a category
    series_size: float = 0.0  # mean items per series (e.g. 6); 0 (default): no series, sequel links, follows
    series_links: int = 2  # each item also links to the previous series_links items of its series (sequels)
    # users
    user_concentration: float = 2.0
    user_spread: float = 0.5
    age_taste_std: float = 0.5
    drift_std: float = 0.5
    activity_sigma: float = 1.2
    price_sensitivity_sigma: float = 0.5
    primary_device_prob: float = 0.85
    fan_series: float = 3.0  # mean number of followed series per user (Poisson)
    fan_affinity: float = 1.5  # click logit boost on items of a followed series
    # logging policy
    candidates_popular: int = 20
    candidates_category: int = 20
    candidates_random: int = 10
    candidates_followed: int = 5  # from the user's followed series ("subscriptions"), created items only
    policy_noise: float = 0.5
    policy_popularity_weight: float = 0.3
    diurnal_amplitude: float = 0.5
    # click model
    target_ctr: float = 0.04
    click_affinity: float = 2.0
    click_quality: float = 0.6
    position_decay: float = 0.5
    hour_amplitude: float = 0.2
    peak_hour: int = 20
    mobile_effect: float = -0.3
    tablet_effect: float = -0.15
    # like model (given click)
    target_like_given_click: float = 0.3
    like_quality: float = 1.5
    like_price: float = 0.8
    like_age_category_std: float = 0.6
    like_affinity: float = 0.3
    # machinery
    chunk_sessions: int = 25_000
    pilot_sessions: int = 20_000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int) and (not isinstance(v, (int, np.integer)) or isinstance(v, bool)):
                raise TypeError(f"WorldConfig.{f.name}: expected an int, got {v!r}")
            if f.type in ("float", float) and (not isinstance(v, (int, float, np.number)) or isinstance(v, bool)):
                raise TypeError(f"WorldConfig.{f.name}: expected a number, got {v!r}")
        positive = ("n_users", "n_items", "n_impressions", "n_categories", "dim", "slate_size", "days",
                    "link_candidates", "link_blocks", "chunk_sessions", "pilot_sessions")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"WorldConfig.{name}: must be >= 1, got {getattr(self, name)}")
        nonneg = ("links_per_item", "prehistory_days", "candidates_popular", "candidates_category",
                  "candidates_random", "candidates_followed", "series_size", "series_links", "fan_series",
                  "item_spread", "popularity_sigma", "user_spread", "age_taste_std",
                  "drift_std", "activity_sigma", "price_sensitivity_sigma", "policy_noise", "position_decay",
                  "like_age_category_std", "price_log_std_category", "price_log_std_item", "link_degree_offset")
        for name in nonneg:
            if getattr(self, name) < 0:
                raise ValueError(f"WorldConfig.{name}: must be >= 0, got {getattr(self, name)}")
        if self.link_candidates < self.links_per_item:
            raise ValueError(
                f"WorldConfig.link_candidates ({self.link_candidates}) must be >= links_per_item "
                f"({self.links_per_item})"
            )
        n_cand = self.candidates_popular + self.candidates_category + self.candidates_random
        if n_cand < self.slate_size:
            raise ValueError(
                f"WorldConfig: candidates_popular + candidates_category + candidates_random = {n_cand} must be "
                f">= slate_size ({self.slate_size}) (followed-series candidates can be missing)"
            )
        for name, lo, hi in (("initial_item_fraction", 0.0, 1.0), ("link_same_category", 0.0, 1.0),
                             ("primary_device_prob", 0.0, 1.0), ("popularity_quality_corr", -1.0, 1.0),
                             ("diurnal_amplitude", 0.0, 1.0)):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise ValueError(f"WorldConfig.{name}: must lie in [{lo}, {hi}], got {v}")
        for name in ("target_ctr", "target_like_given_click"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"WorldConfig.{name}: must lie in (0, 1), got {v}")
        if self.user_concentration <= 0:
            raise ValueError(f"WorldConfig.user_concentration: must be > 0, got {self.user_concentration}")
        if not 0 <= self.peak_hour <= 23:
            raise ValueError(f"WorldConfig.peak_hour: must be in 0..23, got {self.peak_hour}")

    @property
    def n_sessions(self) -> int:
        return max(1, self.n_impressions // self.slate_size)

    @property
    def span_seconds(self) -> int:
        return self.days * DAY


PRESETS: dict[str, WorldConfig] = {
    "tiny": WorldConfig(n_users=300, n_items=200, n_impressions=20_000, n_categories=8, link_blocks=20,
                        chunk_sessions=700, pilot_sessions=2_000),
    "demo": WorldConfig(n_users=20_000, n_items=5_000, n_impressions=1_000_000, n_categories=30),
    "bench": WorldConfig(n_users=200_000, n_items=1_000_000, n_impressions=20_000_000, n_categories=100,
                         chunk_sessions=25_000),
}


# --------------------------------------------------------------------------------------------------------
# Sampling helpers
# --------------------------------------------------------------------------------------------------------


def _searchsorted(a: np.ndarray, v: np.ndarray, side: str = "left") -> np.ndarray:
    """``np.searchsorted`` for many random queries: sorting them first is ~3x faster on large ``a``."""
    v = np.asarray(v)
    if v.size < 4096:
        return np.searchsorted(a, v, side=side)
    flat = v.ravel()
    order = np.argsort(flat)
    out = np.empty(flat.shape, np.int64)
    out[order] = np.searchsorted(a, flat[order], side=side)
    return out.reshape(v.shape)


def _sample_prefix(cum: np.ndarray, lo: np.ndarray, hi: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling of positions in ``[lo, hi)`` with weights given by the inclusive cumsum ``cum``.

    ``lo``, ``hi``, ``u`` (uniforms in [0, 1)) broadcast to one shape; returns int64 positions, -1 where the
    range is empty.
    """
    lo, hi, u = np.broadcast_arrays(np.asarray(lo, np.int64), np.asarray(hi, np.int64), u)
    base = np.where(lo > 0, cum[np.maximum(lo - 1, 0)], 0.0)
    top = np.where(hi > 0, cum[np.maximum(hi - 1, 0)], 0.0)
    pos = _searchsorted(cum, base + u * (top - base), side="right").astype(np.int64)
    pos = np.clip(pos, lo, np.maximum(hi - 1, lo))
    pos[hi <= lo] = -1
    return pos


def _row_duplicates(cand: np.ndarray) -> np.ndarray:
    """(B, C) ids -> (B, C) bool, True on every repeat of an id already present in its row (one copy kept)."""
    order = np.argsort(cand, axis=1, kind="stable")
    s = np.take_along_axis(cand, order, axis=1)
    dup_sorted = np.zeros(cand.shape, bool)
    dup_sorted[:, 1:] = s[:, 1:] == s[:, :-1]
    dup = np.empty_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return dup


def _top_k(score: np.ndarray, k: int) -> np.ndarray:
    """(B, C) scores -> (B, min(k, C)) column indices of the k largest per row, best first."""
    k = min(k, score.shape[1])
    idx = np.argpartition(-score, k - 1, axis=1)[:, :k] if k < score.shape[1] else np.tile(
        np.arange(score.shape[1]), (score.shape[0], 1)
    )
    order = np.argsort(-np.take_along_axis(score, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


def _gumbel(rng: np.random.Generator, shape) -> np.ndarray:
    return -np.log(-np.log(rng.random(shape) * (1 - 1e-12) + 1e-300))


def _ids_to_index(ids_sorted: np.ndarray, sorter: np.ndarray, query, what: str) -> np.ndarray:
    """External ids (P,) -> indices (P,) int64; unknown ids raise ValueError naming them."""
    q = np.asarray(query)
    if q.ndim != 1:
        raise ValueError(f"Oracle: {what} ids must be a 1-d array, got shape {q.shape}")
    try:
        q = q.astype(np.int64, casting="safe") if q.dtype.kind in "iu" else q.astype(np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"Oracle: {what} ids must be integers, got dtype {q.dtype}") from None
    pos = np.clip(np.searchsorted(ids_sorted, q), 0, len(ids_sorted) - 1)
    bad = ids_sorted[pos] != q
    if bad.any():
        unknown = np.unique(q[bad])
        raise ValueError(
            f"Oracle: unknown {what} id(s) {unknown[:10].tolist()}{' ...' if len(unknown) > 10 else ''} "
            f"({len(unknown)} unknown); this world has {len(ids_sorted)} {what}s with ids "
            f"{ids_sorted[0]}..{ids_sorted[-1]}"
        )
    return sorter[pos].astype(np.int64)


def _per_pair(x, n: int, what: str) -> np.ndarray:
    """A scalar or (n,) array -> (n,) array; any other shape raises ValueError naming ``what``."""
    a = np.asarray(x)
    if a.ndim == 0:
        return np.full(n, a.item(), dtype=a.dtype)
    if a.shape != (n,):
        raise ValueError(f"Oracle: {what} must be a scalar or have shape ({n},), got shape {a.shape}")
    return a


# --------------------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------------------


class Oracle:
    """The true click and like model of a synthetic world (see the module docstring for the formulas).

    Build with :meth:`load` from a dataset's ``truth/`` folder (or :meth:`World.oracle`). ``item_ids`` (N,) are
    the external item ids in ``items.parquet`` row order, aligned with the columns of :meth:`scores`.
    """

    def __init__(self, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> None:
        missing = [k for k in TRUTH_ARRAYS if k not in arrays]
        if missing:
            raise ValueError(f"Oracle: truth arrays missing: {missing}; expected {list(TRUTH_ARRAYS)}")
        self.params = params
        self.arrays = arrays
        self.item_ids: np.ndarray = np.asarray(arrays["item_ids"], np.int64)
        self.user_ids: np.ndarray = np.asarray(arrays["user_ids"], np.int64)
        self._item_sorter = np.argsort(self.item_ids, kind="stable")
        self._item_sorted = self.item_ids[self._item_sorter]
        self._user_sorter = np.argsort(self.user_ids, kind="stable")
        self._user_sorted = self.user_ids[self._user_sorter]
        self.quality = arrays["item_quality"]
        self.created_at = np.asarray(arrays["item_created_at"], np.int64)
        self._vec = arrays["item_vec"]
        self._cat = np.asarray(arrays["item_category"], np.int64)
        self._pz = arrays["item_price_z"]
        self._uvec = arrays["user_vec"]
        self._udrift = arrays["user_drift"]
        self._age = np.asarray(arrays["user_age"], np.int64)
        self._sens = arrays["user_price_sens"]
        self._age_cat = np.asarray(arrays["like_age_category"], np.float64)
        self._devices = tuple(params["devices"])
        self._dev_effect = np.array([params["device_effects"][d] for d in self._devices], np.float64)
        self._start = int(params["start_ts"])
        self._span = float(params["span_seconds"])
        self._vec64: np.ndarray | None = None
        self._series = np.asarray(arrays["item_series"], np.int64)
        self._fan_indptr = np.asarray(arrays["user_fan_indptr"], np.int64)
        self._fan_series = np.asarray(arrays["user_fan_series"], np.int64)
        n_users = len(self.user_ids)
        if len(self._series) != len(self.item_ids) or len(self._fan_indptr) != n_users + 1 \
                or self._fan_indptr[-1] != len(self._fan_series):
            raise ValueError(
                f"Oracle: series arrays do not fit: item_series {self._series.shape} for {len(self.item_ids)} "
                f"items, user_fan_indptr {self._fan_indptr.shape} for {n_users} users, user_fan_series "
                f"{self._fan_series.shape}"
            )
        self.n_series = int(self._series.max()) + 1 if len(self._series) else 0
        rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(self._fan_indptr))
        self._fan_keys = np.sort(rows * max(self.n_series, 1) + self._fan_series)  # (F,) user * S + series

    @classmethod
    def load(cls, truth_dir: str | Path) -> "Oracle":
        """Read ``truth_dir/world.json`` and the ``.npy`` arrays (no pickle)."""
        truth_dir = Path(truth_dir)
        wj = truth_dir / WORLD_JSON
        if not wj.is_file():
            raise ValueError(f"{wj}: not found; expected the truth/ folder of a synthetic dataset")
        params = json.loads(wj.read_text(encoding="utf-8"))
        fmt = params.get("truth_format")
        if fmt not in (1, TRUTH_FORMAT):
            raise ValueError(f"{wj}: truth_format {fmt!r} is not one of 1, {TRUTH_FORMAT}")
        arrays = {}
        for name in TRUTH_ARRAYS:
            f = truth_dir / f"{name}.npy"
            if fmt == 1 and name in SERIES_ARRAYS:
                continue  # format 1 predates series: a world without them
            if not f.is_file():
                raise ValueError(f"{f}: truth array missing")
            arrays[name] = np.load(f, allow_pickle=False)
        if fmt == 1:
            arrays["item_series"] = np.arange(len(arrays["item_ids"]), dtype=np.int32)
            arrays["user_fan_indptr"] = np.zeros(len(arrays["user_ids"]) + 1, np.int64)
            arrays["user_fan_series"] = np.zeros(0, np.int32)
            params = {**params, "fan_affinity": 0.0}
        return cls(arrays, params)

    # ---- id mapping -----------------------------------------------------------------------------------
    def user_index(self, user_ids) -> np.ndarray:
        """(P,) external user ids -> (P,) indices into the users table; unknown ids raise ValueError."""
        return _ids_to_index(self._user_sorted, self._user_sorter, user_ids, "user")

    def item_index(self, item_ids) -> np.ndarray:
        """(P,) external item ids -> (P,) indices into the items table; unknown ids raise ValueError."""
        return _ids_to_index(self._item_sorted, self._item_sorter, item_ids, "item")

    def _device_codes(self, device, n: int) -> np.ndarray:
        d = _per_pair(device, n, "device")
        if d.dtype.kind in "iu":
            if d.size and (d.min() < 0 or d.max() >= len(self._devices)):
                raise ValueError(f"Oracle: device codes must be in 0..{len(self._devices) - 1} ({self._devices})")
            return d.astype(np.int64)
        codes = pd.Categorical(d.astype(object), categories=list(self._devices)).codes.astype(np.int64)
        if (codes < 0).any():
            bad = sorted({str(x) for x in d[codes < 0]})
            raise ValueError(f"Oracle: unknown device(s) {bad}; expected one of {list(self._devices)}")
        return codes

    # ---- index-level model (used by the generator too, so logged truth equals the oracle) ----------------
    def _user_at(self, u: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """(P,) user indices, (P,) Unix s -> (P, D) float64 taste at time ts (linear drift)."""
        frac = (np.asarray(ts, np.int64) - self._start).astype(np.float64) / self._span
        return self._uvec[u].astype(np.float64) + self._udrift[u].astype(np.float64) * frac[:, None]

    def _affinity(self, u: np.ndarray, i: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """(P,) pairs -> (P,) float64 ``u_u(t) . v_i``."""
        return (self._user_at(u, ts) * self._vec[i].astype(np.float64)).sum(axis=-1)

    def _context_effect(self, n: int, position, hour, device) -> np.ndarray:
        p = self.params
        eff = np.zeros(n, np.float64)
        if position is not None:
            pos = _per_pair(position, n, "position").astype(np.float64)
            if (pos < 0).any():
                raise ValueError("Oracle: position must be >= 0")
            eff = eff - p["position_decay"] * np.log2(1.0 + pos)
        if hour is not None:
            h = _per_pair(hour, n, "hour").astype(np.float64)
            eff = eff + p["hour_amplitude"] * np.cos(2 * np.pi * (h - p["peak_hour"]) / 24.0)
        if device is not None:
            eff = eff + self._dev_effect[self._device_codes(device, n)]
        return eff

    def follows(self, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        """(P,) user and item *indices* -> (P,) bool: does user u follow the series of item i."""
        if not len(self._fan_keys):
            return np.zeros(len(u), bool)
        key = np.asarray(u, np.int64) * max(self.n_series, 1) + self._series[i]
        pos = np.minimum(np.searchsorted(self._fan_keys, key), len(self._fan_keys) - 1)
        return self._fan_keys[pos] == key

    def _follows_matrix(self, u: np.ndarray) -> np.ndarray:
        """(B,) user indices -> (B, N) float64 1.0 where the user follows the item's series."""
        lo, hi = self._fan_indptr[u], self._fan_indptr[u + 1]
        n = hi - lo
        rows = np.repeat(np.arange(len(u)), n)
        idx = np.repeat(lo - np.concatenate([[0], np.cumsum(n)[:-1]]), n) + np.arange(n.sum())
        fan = np.zeros((len(u), max(self.n_series, 1)), np.float64)
        fan[rows, self._fan_series[idx]] = 1.0
        return fan[:, self._series]

    def _click_logit(self, aff: np.ndarray, u: np.ndarray, i: np.ndarray, ctx: np.ndarray | float) -> np.ndarray:
        p = self.params
        q = self.quality[i].astype(np.float64)
        return (p["click_bias"] + p["click_affinity"] * aff + p["click_quality"] * q
                + p["fan_affinity"] * self.follows(u, i) + ctx)

    def _like_logit(self, aff: np.ndarray, u: np.ndarray, i: np.ndarray) -> np.ndarray:
        p = self.params
        return (
            p["like_bias"]
            + p["like_quality"] * self.quality[i].astype(np.float64)
            - p["like_price"] * self._sens[u].astype(np.float64) * self._pz[i].astype(np.float64)
            + self._age_cat[self._age[u], self._cat[i]]
            + p["like_affinity"] * aff
        )

    def _logits_idx(self, u, i, ts, position=None, hour=None, device=None) -> tuple[np.ndarray, np.ndarray]:
        """Index-level pairs -> (logit P(click), logit P(like | click)), both (P,) float64."""
        aff = self._affinity(u, i, ts)
        ctx = self._context_effect(len(u), position, hour, device)
        return self._click_logit(aff, u, i, ctx), self._like_logit(aff, u, i)

    def _truth_idx(self, u, i, ts, position=None, hour=None, device=None) -> tuple[np.ndarray, np.ndarray]:
        """Index-level pairs -> (P(click), P(like | click)), both (P,) float64; 0 click prob before creation."""
        zc, zl = self._logits_idx(u, i, ts, position, hour, device)
        pc = expit(zc)
        pc[self.created_at[i] > np.asarray(ts, np.int64)] = 0.0
        return pc, expit(zl)

    def _pairs(self, user_ids, item_ids, timestamps):
        u = self.user_index(user_ids)
        i = self.item_index(item_ids)
        if len(u) != len(i):
            raise ValueError(f"Oracle: user_ids ({len(u)}) and item_ids ({len(i)}) must have the same length")
        return u, i, _per_pair(timestamps, len(u), "timestamps").astype(np.int64)

    # ---- public API -------------------------------------------------------------------------------------
    def p_click(self, user_ids, item_ids, timestamps, position=None, hour=None, device=None) -> np.ndarray:
        """(P,) pairs at (P,) Unix s -> (P,) float64 true click probability.

        ``position`` None means position 0; ``hour``/``device`` None mean no context effect. Items not yet
        created at the timestamp get 0.
        """
        u, i, ts = self._pairs(user_ids, item_ids, timestamps)
        return self._truth_idx(u, i, ts, 0 if position is None else position, hour, device)[0]

    def p_like_given_click(self, user_ids, item_ids, timestamps) -> np.ndarray:
        """(P,) pairs at (P,) Unix s -> (P,) float64 true P(like | click) (context does not enter)."""
        u, i, ts = self._pairs(user_ids, item_ids, timestamps)
        return expit(self._like_logit(self._affinity(u, i, ts), u, i))

    def expected_value(self, user_ids, item_ids, timestamps) -> np.ndarray:
        """(P,) pairs -> (P,) EV = P(click | pos 0, neutral) * (1 + P(like | click)); -inf before creation."""
        u, i, ts = self._pairs(user_ids, item_ids, timestamps)
        pc, pl = self._truth_idx(u, i, ts, 0)
        ev = pc * (1.0 + pl)
        ev[self.created_at[i] > ts] = -np.inf
        return ev

    def scores(self, user_ids, timestamps, max_cells: int = 1 << 22) -> np.ndarray:
        """(B,) external user ids at (B,) Unix s -> (B, N) float64 true expected value of every item.

        EV as in :meth:`expected_value`, columns aligned with ``item_ids``; not-yet-created items get -inf.
        Computed in row blocks of about ``max_cells`` cells to bound temporaries.
        """
        u = self.user_index(user_ids)
        ts = _per_pair(timestamps, len(u), "timestamps").astype(np.int64)
        p = self.params
        if self._vec64 is None:
            self._vec64 = self._vec.astype(np.float64)
        n = len(self.item_ids)
        q = self.quality.astype(np.float64)
        click_item = p["click_bias"] + p["click_quality"] * q  # (N,)
        like_item = p["like_bias"] + p["like_quality"] * q  # (N,)
        pz = self._pz.astype(np.float64)
        out = np.empty((len(u), n), np.float64)
        step = max(1, max_cells // max(n, 1))
        for a in range(0, len(u), step):
            ub, tb = u[a : a + step], ts[a : a + step]
            aff = self._user_at(ub, tb) @ self._vec64.T  # (b, N)
            pc = expit(click_item + p["click_affinity"] * aff + p["fan_affinity"] * self._follows_matrix(ub))
            ll = like_item - p["like_price"] * self._sens[ub].astype(np.float64)[:, None] * pz
            ll += self._age_cat[self._age[ub]][:, self._cat]
            ll += p["like_affinity"] * aff
            ev = pc * (1.0 + expit(ll))
            ev[self.created_at[None, :] > tb[:, None]] = -np.inf
            out[a : a + step] = ev
        return out


# --------------------------------------------------------------------------------------------------------
# World generation
# --------------------------------------------------------------------------------------------------------


def _zipf(n: int, s: float) -> np.ndarray:
    w = (np.arange(n) + 1.0) ** -s
    return w / w.sum()


def _make_items(cfg: WorldConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, k, d = cfg.n_items, cfg.n_categories, cfg.dim
    cat = rng.choice(k, size=n, p=_zipf(k, cfg.category_zipf)).astype(np.int32)
    centres = rng.standard_normal((k, d)) / math.sqrt(d)
    vec = (centres[cat] + cfg.item_spread * rng.standard_normal((n, d)) / math.sqrt(d)).astype(np.float32)
    q = rng.standard_normal(n).astype(np.float32)
    rho = cfg.popularity_quality_corr
    log_pop = (cfg.popularity_sigma * (rho * q + math.sqrt(1 - rho * rho) * rng.standard_normal(n))).astype(
        np.float32
    )
    n0 = min(n, max(1, round(n * cfg.initial_item_fraction)))
    pre = cfg.start_ts - (rng.random(n0) * cfg.prehistory_days * DAY).astype(np.int64) - 1
    post = cfg.start_ts + (rng.random(n - n0) * cfg.span_seconds).astype(np.int64)
    created = np.sort(np.concatenate([pre, post]))  # attributes are iid, so row order = creation order
    cat_mu = cfg.price_log_mean + cfg.price_log_std_category * rng.standard_normal(k)
    log_price = cat_mu[cat] + cfg.price_log_std_item * rng.standard_normal(n) + 0.15 * q
    price = np.maximum(np.round(np.exp(log_price), 2), 0.99)
    lp = np.log(price)
    price_z = ((lp - lp.mean()) / max(lp.std(), 1e-9)).astype(np.float32)
    return dict(category=cat, centres=centres, vec=vec, quality=q, log_pop=log_pop, created_at=created,
                price=price, price_z=price_z)


def _link_graph(items: dict[str, np.ndarray], cfg: WorldConfig, rng: np.random.Generator):
    """Preferential attachment with fitness and similarity; returns (src, dst) int64 item indices (E,)."""
    cat = items["category"].astype(np.int64)
    n, m = len(cat), cfg.links_per_item
    if n < 2 or m == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    vec = items["vec"]
    unit = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-9)
    k_cat = int(round(cfg.link_candidates * cfg.link_same_category))
    k_glob = cfg.link_candidates - k_cat
    cat_order = np.argsort(cat, kind="stable")  # by category, then creation order
    cat_pos = np.empty(n, np.int64)
    cat_pos[cat_order] = np.arange(n)
    cat_start = np.searchsorted(cat[cat_order], np.arange(cfg.n_categories))
    rank_in_cat = cat_pos - cat_start[cat]
    fitness = np.exp(cfg.link_quality_weight * items["quality"].astype(np.float64))
    indeg = np.zeros(n, np.int64)
    srcs, dsts = [], []
    bounds = np.unique(np.linspace(1, n, min(cfg.link_blocks, n - 1) + 1).astype(np.int64))
    for s, e in zip(bounds[:-1], bounds[1:]):
        w = (indeg + cfg.link_degree_offset) * fitness
        r = np.arange(s, e)
        parts = []
        if k_glob:
            parts.append(_sample_prefix(np.cumsum(w), 0, r[:, None], rng.random((len(r), k_glob))))
        if k_cat:
            lo = cat_start[cat[r]][:, None]
            pos = _sample_prefix(np.cumsum(w[cat_order]), lo, lo + rank_in_cat[r][:, None],
                                 rng.random((len(r), k_cat)))
            parts.append(np.where(pos >= 0, cat_order[np.maximum(pos, 0)], -1))
        cand = np.concatenate(parts, axis=1)  # (b, k)
        valid = cand >= 0
        sim = (unit[r][:, None, :] * unit[np.maximum(cand, 0)]).sum(-1)
        score = cfg.link_similarity_weight * sim + _gumbel(rng, cand.shape)
        score[~valid | _row_duplicates(cand)] = -np.inf
        top = _top_k(score, m)
        chosen = np.take_along_axis(cand, top, axis=1)
        ok = np.isfinite(np.take_along_axis(score, top, axis=1))
        src = np.broadcast_to(r[:, None], chosen.shape)[ok]
        dst = chosen[ok]
        srcs.append(src)
        dsts.append(dst)
        indeg += np.bincount(dst, minlength=n)
    return np.concatenate(srcs), np.concatenate(dsts)


def _make_series(cat: np.ndarray, cfg: WorldConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N,) item categories -> ((N,) int64 series of each item, (S,) int64 category of each series).

    Category k holds ``max(1, round(n_k / series_size))`` series and each of its items joins one uniformly at
    random; with ``series_size = 0`` every item is its own series.
    """
    n, k = len(cat), cfg.n_categories
    if cfg.series_size == 0 or n == 0:
        return np.arange(n, dtype=np.int64), cat.astype(np.int64)
    counts = np.bincount(cat, minlength=k)
    per_cat = np.where(counts > 0, np.maximum(1, np.round(counts / cfg.series_size)), 0).astype(np.int64)
    first = np.concatenate([[0], np.cumsum(per_cat)[:-1]])
    series = first[cat] + np.minimum((rng.random(n) * per_cat[cat]).astype(np.int64), per_cat[cat] - 1)
    return series, np.repeat(np.arange(k, dtype=np.int64), per_cat)


def _sequel_links(series: np.ndarray, n_links: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item links to the previous ``n_links`` items of its series (items are in creation order)."""
    order = np.argsort(series, kind="stable")  # by series, then creation
    srcs, dsts = [], []
    for lag in range(1, n_links + 1):
        a, b = order[lag:], order[:-lag]
        same = series[a] == series[b]
        srcs.append(a[same])
        dsts.append(b[same])
    if not srcs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(srcs).astype(np.int64), np.concatenate(dsts).astype(np.int64)


def _follows(theta: np.ndarray, series_cat: np.ndarray, cfg: WorldConfig, rng: np.random.Generator):
    """Followed series per user: ``Poisson(fan_series)`` draws, each a category from ``theta_u`` and a series
    of it uniformly (duplicates merged). Returns CSR ``(indptr (U+1,) int64, series (F,) int32)``."""
    u_n, k = theta.shape
    if cfg.series_size == 0 or cfg.fan_series == 0 or len(series_cat) == 0:
        return np.zeros(u_n + 1, np.int64), np.zeros(0, np.int32)
    n_draw = rng.poisson(cfg.fan_series, u_n)
    users = np.repeat(np.arange(u_n), n_draw)
    cum = np.cumsum(theta.astype(np.float64), axis=1)
    cum /= cum[:, -1:]
    cum += np.arange(u_n)[:, None]  # row u's CDF shifted to [u, u + 1]: one searchsorted for all draws
    c = np.searchsorted(cum.ravel(), users + rng.random(len(users)), side="right") - users * k
    c = np.clip(c, 0, k - 1)  # category ~ theta_u
    counts = np.bincount(series_cat, minlength=k)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ok = counts[c] > 0
    users, c = users[ok], c[ok]
    s = first[c] + np.minimum((rng.random(len(c)) * counts[c]).astype(np.int64), counts[c] - 1)
    keys = np.unique(users * len(series_cat) + s)  # sorted by user, then series; duplicates merged
    u_of, s_of = keys // len(series_cat), keys % len(series_cat)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(u_of, minlength=u_n))]).astype(np.int64)
    return indptr, s_of.astype(np.int32)


def _make_users(cfg: WorldConfig, centres: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n, k, d = cfg.n_users, cfg.n_categories, cfg.dim
    age = rng.choice(len(AGE_BUCKETS), size=n, p=AGE_P).astype(np.int32)
    country = rng.choice(len(COUNTRIES), size=n, p=_zipf(len(COUNTRIES), 1.0)).astype(np.int32)
    device = rng.choice(len(DEVICES), size=n, p=DEVICE_P).astype(np.int8)
    age_taste = cfg.age_taste_std * rng.standard_normal((len(AGE_BUCKETS), k))
    base = _zipf(k, cfg.category_zipf)[None, :] * np.exp(age_taste)  # (A, K)
    base = cfg.user_concentration * base / base.sum(axis=1, keepdims=True)
    g = rng.standard_gamma(base[age]) + 1e-12  # (U, K) Dirichlet via normalized gammas
    theta = (g / g.sum(axis=1, keepdims=True)).astype(np.float32)
    del g
    uvec = (theta @ centres.astype(np.float32) + cfg.user_spread * rng.standard_normal((n, d), np.float32)
            / math.sqrt(d)).astype(np.float32)
    drift = (cfg.drift_std * rng.standard_normal((n, d), np.float32) / math.sqrt(d)).astype(np.float32)
    activity = np.exp(cfg.activity_sigma * rng.standard_normal(n)).astype(np.float32)
    sens = np.exp(cfg.price_sensitivity_sigma * rng.standard_normal(n)).astype(np.float32)
    like_age_cat = cfg.like_age_category_std * rng.standard_normal((len(AGE_BUCKETS), k))
    return dict(age=age, country=country, device=device, theta=theta, vec=uvec, drift=drift,
                activity=activity, price_sens=sens, like_age_category=like_age_cat)


class _Policy:
    """The logging policy: candidate sampling (popularity, user categories, uniform) and a noisy slate."""

    def __init__(self, cfg: WorldConfig, items: dict[str, np.ndarray], users: dict[str, np.ndarray]) -> None:
        self.cfg = cfg
        self.created = items["created_at"]
        self.vec = items["vec"]
        self.log_pop = items["log_pop"]
        pop = np.exp(items["log_pop"].astype(np.float64))
        self.cum_pop = np.cumsum(pop)
        cat = items["category"].astype(np.int64)
        self.cat_order = np.argsort(cat, kind="stable")
        self.cum_pop_cat = np.cumsum(pop[self.cat_order])
        self.cat_start = np.searchsorted(cat[self.cat_order], np.arange(cfg.n_categories))
        self.t_min = int(self.created.min())
        self.t_range = int(self.created.max()) - self.t_min + 1
        self.cat_key = cat[self.cat_order] * self.t_range + (self.created[self.cat_order] - self.t_min)
        series = items["series"]
        self.ser_order = np.argsort(series, kind="stable")  # by series, then creation
        self.ser_key = series[self.ser_order] * self.t_range + (self.created[self.ser_order] - self.t_min)
        self.ser_start = np.searchsorted(series[self.ser_order], np.arange(int(series.max()) + 1 if len(series)
                                                                            else 0))
        self.fan_indptr, self.fan_series = users["fan_indptr"], users["fan_series"].astype(np.int64)
        self.cum_theta = np.cumsum(users["theta"], axis=1)  # (U, K) float32
        self.uvec = users["vec"]
        self.cum_activity = np.cumsum(users["activity"].astype(np.float64))
        self.user_device = users["device"]
        h = np.arange(24)
        w = 1 + cfg.diurnal_amplitude * np.cos(2 * np.pi * (h - cfg.peak_hour) / 24)
        self.hour_p = w / w.sum()

    def sessions(self, n: int, rng: np.random.Generator):
        """n sessions sorted by time -> (users (n,) int64, timestamps (n,) int64, device codes (n,) int8)."""
        cfg = self.cfg
        day = rng.integers(0, cfg.days, n)
        hour = rng.choice(24, size=n, p=self.hour_p)
        ts = np.sort(cfg.start_ts + day * DAY + hour * 3600 + rng.integers(0, 3600, n))
        users = np.searchsorted(self.cum_activity, rng.random(n) * self.cum_activity[-1], side="right")
        users = np.minimum(users, len(self.cum_activity) - 1).astype(np.int64)
        switch = rng.random(n) >= cfg.primary_device_prob
        other = rng.choice(len(DEVICES), size=n, p=DEVICE_P).astype(np.int8)
        device = np.where(switch, other, self.user_device[users]).astype(np.int8)
        return users, ts.astype(np.int64), device

    def slates(self, users: np.ndarray, ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(B,) sessions -> (B, L) int64 item indices best first, -1 where fewer than L items were available."""
        cfg = self.cfg
        b = len(users)
        n_created = np.searchsorted(self.created, ts, side="right")[:, None]  # (B, 1)
        parts = []
        if cfg.candidates_popular:
            parts.append(_sample_prefix(self.cum_pop, 0, n_created, rng.random((b, cfg.candidates_popular))))
        if cfg.candidates_category:
            kc = cfg.candidates_category
            k = self.cum_theta.shape[1]
            ct = self.cum_theta[users].astype(np.float64)
            ct /= ct[:, -1:]
            rows = np.arange(b)[:, None]
            c = np.searchsorted((ct + rows).ravel(), (rng.random((b, kc)) + rows).ravel(), side="right")
            c = np.minimum(c.reshape(b, kc) - rows * k, k - 1)  # (B, kc) categories drawn from theta_u
            key = c * self.t_range + np.clip(ts[:, None] - self.t_min, 0, self.t_range - 1)
            hi = _searchsorted(self.cat_key, key, side="right")
            pos = _sample_prefix(self.cum_pop_cat, self.cat_start[c], hi, rng.random((b, kc)))
            parts.append(np.where(pos >= 0, self.cat_order[np.maximum(pos, 0)], -1))
        if cfg.candidates_random:
            r = np.floor(rng.random((b, cfg.candidates_random)) * n_created).astype(np.int64)
            parts.append(np.where(n_created > 0, r, -1))
        if cfg.candidates_followed and len(self.fan_series):  # no follows (series off): no draws either
            kf = cfg.candidates_followed
            lo, n_fan = self.fan_indptr[users][:, None], np.diff(self.fan_indptr)[users][:, None]
            j = lo + np.minimum((rng.random((b, kf)) * n_fan).astype(np.int64), np.maximum(n_fan - 1, 0))
            s = self.fan_series[np.minimum(j, len(self.fan_series) - 1)]  # (B, kf) a followed series, then
            key = s * self.t_range + np.clip(ts[:, None] - self.t_min, 0, self.t_range - 1)  # one of its items
            hi = _searchsorted(self.ser_key, key, side="right")  # ... created by ts
            first = self.ser_start[s]
            pos = first + np.minimum((rng.random((b, kf)) * (hi - first)).astype(np.int64),
                                     np.maximum(hi - first - 1, 0))
            ok = (n_fan > 0) & (hi > first)
            parts.append(np.where(ok, self.ser_order[np.clip(pos, 0, len(self.ser_order) - 1)], -1))
        cand = np.concatenate(parts, axis=1)  # (B, C)
        safe = np.maximum(cand, 0)
        score = np.matmul(self.vec[safe], self.uvec[users][:, :, None])[..., 0]  # (B, C) stale u . v
        score += cfg.policy_popularity_weight * self.log_pop[safe]
        score += cfg.policy_noise * rng.standard_normal(cand.shape, np.float32)
        score[(cand < 0) | _row_duplicates(cand)] = -np.inf
        top = _top_k(score, cfg.slate_size)
        items = np.take_along_axis(cand, top, axis=1)
        items[~np.isfinite(np.take_along_axis(score, top, axis=1))] = -1
        return items


def _impressions(policy: _Policy, users, ts, rng):
    """One block of B sessions -> flat impressions (session row (M,), item (M,), position (M,), hour (M,))."""
    items = policy.slates(users, ts, rng)
    rows, pos = np.nonzero(items >= 0)
    return rows, items[rows, pos], pos, (ts[rows] // 3600) % 24


def _solve_bias(z: np.ndarray, target: float, weights: np.ndarray | None = None) -> float:
    """b with weighted mean of sigmoid(b + z) == target (bisection; the mean is increasing in b)."""
    lo, hi = -30.0, 30.0
    w = np.ones_like(z) if weights is None else weights
    wsum = w.sum()
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if (w * expit(mid + z)).sum() / wsum < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _params(cfg: WorldConfig, seed: int, click_bias: float, like_bias: float) -> dict[str, Any]:
    return {
        "truth_format": TRUTH_FORMAT,
        "seed": int(seed),
        "config": dataclasses.asdict(cfg),
        "start_ts": int(cfg.start_ts),
        "span_seconds": int(cfg.span_seconds),
        "end_ts": int(cfg.start_ts + cfg.span_seconds),
        "devices": list(DEVICES),
        "device_effects": {"desktop": 0.0, "mobile": cfg.mobile_effect, "tablet": cfg.tablet_effect},
        "age_buckets": list(AGE_BUCKETS),
        "countries": list(COUNTRIES),
        "categories": [f"c{k:03d}" for k in range(cfg.n_categories)],
        "click_bias": float(click_bias),
        "click_affinity": cfg.click_affinity,
        "click_quality": cfg.click_quality,
        "fan_affinity": cfg.fan_affinity,
        "position_decay": cfg.position_decay,
        "hour_amplitude": cfg.hour_amplitude,
        "peak_hour": cfg.peak_hour,
        "like_bias": float(like_bias),
        "like_quality": cfg.like_quality,
        "like_price": cfg.like_price,
        "like_affinity": cfg.like_affinity,
        "formulas": {
            "affinity": "u_u(t) . v_i with u_u(t) = user_vec + user_drift * (t - start_ts) / span_seconds",
            "p_click": "sigmoid(click_bias + click_affinity*aff + click_quality*q + fan_affinity*follows(u, series_i)"
            " - position_decay*log2(1+pos)"
            " + hour_amplitude*cos(2*pi*(hour-peak_hour)/24) + device_effects[device])",
            "p_like_given_click": "sigmoid(like_bias + like_quality*q - like_price*price_sens*price_z"
            " + like_age_category[age, category] + like_affinity*aff)",
            "expected_value": "p_click(position 0, no context) * (1 + p_like_given_click); -inf before created_at",
        },
    }


@dataclasses.dataclass
class World:
    """A generated world: the canonical tables plus the truth arrays and parameters of its oracle."""

    config: WorldConfig
    seed: int
    interactions: pd.DataFrame
    users: pd.DataFrame
    items: pd.DataFrame
    item_links: pd.DataFrame
    truth: dict[str, np.ndarray]
    params: dict[str, Any]

    def oracle(self) -> Oracle:
        return Oracle(self.truth, self.params)

    def to_dataset(self) -> Dataset:
        cat = col("categorical")
        schema = make_schema(
            name=f"synthetic-seed{self.seed}",
            interactions={
                "user_id": col("user_id"),
                "item_id": col("item_id"),
                "timestamp": col("timestamp"),
                "session_id": col("session", description="slate id: groups the impressions of one session; "
                                  "not a model feature"),
                "position": col("position"),
                "hour": col("context", "categorical", description="hour of day (UTC), 0..23"),
                "device": col("context", "categorical"),
                "click": col("label", "binary"),
                "like": col("label", "binary", description="like given click; 0 when click is 0"),
                "p_click": col("truth", description="true P(click) of this impression"),
                "p_like": col("truth", description="true P(like) = P(click) * P(like | click)"),
            },
            positive_label="click",
            users={"user_id": col("user_id"), "age_bucket": cat, "country": cat, "device": cat},
            items={
                "item_id": col("item_id"),
                "category": cat,
                "created_at": col("numeric", description="creation time, Unix s"),
                "price": col("numeric"),
            },
            item_links={"src": col("src"), "dst": col("dst")},
            has_impressions=True,
            description=(
                f"synthetic world (recsys.data.synthetic), seed {self.seed}: {len(self.users)} users, "
                f"{len(self.items)} items, {len(self.interactions)} impressions; ground truth in truth/"
            ),
            source="recsys.data.synthetic",
        )
        return Dataset(schema, self.interactions, self.users, self.items, self.item_links)

    def save_truth(self, folder: str | Path) -> None:
        """Write the truth arrays (one ``.npy`` each) and ``world.json`` into ``folder`` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, arr in self.truth.items():
            np.save(folder / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        write_json(folder / WORLD_JSON, {**self.params, "arrays": {k: v[1] for k, v in TRUTH_ARRAYS.items()}})

    def save(self, out: str | Path, overwrite: bool = False) -> Dataset:
        """Write the dataset folder with its ``truth/`` sub-folder atomically; returns the Dataset."""
        out = Path(out)
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out}: output folder exists; pass overwrite=True to replace it")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.truth-", dir=out.parent))
        try:
            self.save_truth(tmp / "truth")
            ds = write_dataset(self.to_dataset(), out, overwrite=overwrite, extra_dirs={"truth": tmp / "truth"})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("wrote synthetic world to %s", out)
        return ds


def generate_world(cfg: WorldConfig, seed: int) -> World:
    """Generate the world for ``cfg`` and ``seed`` (same inputs -> identical tables)."""
    if not isinstance(cfg, WorldConfig):
        raise TypeError(f"generate_world: cfg must be a WorldConfig, got {type(cfg).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"generate_world: seed must be a non-negative int, got {seed!r}")
    t0 = time.perf_counter()
    r_items, r_links, r_users, r_pilot, r_sess, r_chunks, r_series = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(7)
    )
    items = _make_items(cfg, r_items)
    items["series"], series_cat = _make_series(items["category"].astype(np.int64), cfg, r_series)
    src, dst = _link_graph(items, cfg, r_links)
    if cfg.series_size and cfg.series_links:
        s2, d2 = _sequel_links(items["series"], cfg.series_links)
        keys = np.concatenate([src * cfg.n_items + dst, s2 * cfg.n_items + d2])
        _, first = np.unique(keys, return_index=True)
        keep = np.sort(first)  # preferential-attachment links first, then the new sequel links
        src, dst = np.concatenate([src, s2])[keep], np.concatenate([dst, d2])[keep]
    users = _make_users(cfg, items["centres"], r_users)
    users["fan_indptr"], users["fan_series"] = _follows(users["theta"], series_cat, cfg, r_series)
    logger.info("items, links (%d), users in %.2fs", len(src), time.perf_counter() - t0)
    truth = {
        "item_ids": ITEM_ID_OFFSET + np.arange(cfg.n_items, dtype=np.int64),
        "item_vec": items["vec"],
        "item_quality": items["quality"],
        "item_log_pop": items["log_pop"],
        "item_category": items["category"].astype(np.int32),
        "item_created_at": items["created_at"].astype(np.int64),
        "item_price_z": items["price_z"],
        "user_ids": 1 + np.arange(cfg.n_users, dtype=np.int64),
        "user_vec": users["vec"],
        "user_drift": users["drift"],
        "user_age": users["age"].astype(np.int32),
        "user_price_sens": users["price_sens"],
        "user_activity": users["activity"],
        "like_age_category": users["like_age_category"].astype(np.float64),
        "item_series": items["series"].astype(np.int32),
        "user_fan_indptr": users["fan_indptr"],
        "user_fan_series": users["fan_series"],
    }
    policy = _Policy(cfg, items, users)

    # calibrate the biases on a pilot log (its own random stream)
    pilot = Oracle(truth, _params(cfg, seed, 0.0, 0.0))
    pu, pts, pdev = policy.sessions(min(cfg.n_sessions, cfg.pilot_sessions), r_pilot)
    rows, i, pos, hour = _impressions(policy, pu, pts, r_pilot)
    if len(rows) == 0:
        raise ValueError("generate_world: the pilot log is empty; raise n_items or initial_item_fraction")
    z_click, z_like = pilot._logits_idx(pu[rows], i, pts[rows], pos, hour, pdev[rows])
    click_bias = _solve_bias(z_click, cfg.target_ctr)
    like_bias = _solve_bias(z_like, cfg.target_like_given_click, weights=expit(click_bias + z_click))
    params = _params(cfg, seed, click_bias, like_bias)
    oracle = Oracle(truth, params)
    logger.info("calibrated click_bias=%.3f like_bias=%.3f", click_bias, like_bias)

    # the log, in blocks of sessions (time order)
    n_sess = cfg.n_sessions
    users_s, ts_s, dev_s = policy.sessions(n_sess, r_sess)
    cap = n_sess * cfg.slate_size
    out_u = np.empty(cap, np.int32)  # user / item indices
    out_i = np.empty(cap, np.int32)
    out_t = np.empty(cap, np.int64)
    out_s = np.empty(cap, np.int64)
    out_pos = np.empty(cap, np.int16)
    out_h = np.empty(cap, np.int16)
    out_d = np.empty(cap, np.int8)
    out_c = np.empty(cap, np.int8)
    out_l = np.empty(cap, np.int8)
    out_pc = np.empty(cap, np.float32)
    out_pl = np.empty(cap, np.float32)
    n = 0
    n_chunks = -(-n_sess // cfg.chunk_sessions)
    for chunk, seq in enumerate(np.random.SeedSequence(int(r_chunks.integers(2**63))).spawn(n_chunks)):
        rng = np.random.default_rng(seq)
        a = chunk * cfg.chunk_sessions
        b = min(a + cfg.chunk_sessions, n_sess)
        rows, i, pos, hour = _impressions(policy, users_s[a:b], ts_s[a:b], rng)
        pc, plg = oracle._truth_idx(users_s[a:b][rows], i, ts_s[a:b][rows], pos, hour, dev_s[a:b][rows])
        click = rng.random(len(rows)) < pc
        like = click & (rng.random(len(rows)) < plg)
        m = len(rows)
        sl = slice(n, n + m)
        out_u[sl] = users_s[a:b][rows]
        out_i[sl] = i
        out_t[sl] = ts_s[a:b][rows]
        out_s[sl] = a + rows
        out_pos[sl] = pos
        out_h[sl] = hour
        out_d[sl] = dev_s[a:b][rows]
        out_c[sl] = click
        out_l[sl] = like
        out_pc[sl] = pc
        out_pl[sl] = pc * plg
        n += m
    logger.info("%d impressions in %d sessions, %.2fs total", n, n_sess, time.perf_counter() - t0)

    followed = oracle.follows(out_u[:n].astype(np.int64), out_i[:n].astype(np.int64))
    followed_clicks = followed[out_c[:n] == 1]
    interactions = pd.DataFrame(
        {
            "user_id": truth["user_ids"][out_u[:n]],
            "item_id": truth["item_ids"][out_i[:n]],
            "timestamp": out_t[:n],
            "session_id": out_s[:n],
            "position": out_pos[:n],
            "hour": out_h[:n],
            "device": pd.Categorical.from_codes(out_d[:n], categories=list(DEVICES)),
            "click": out_c[:n],
            "like": out_l[:n],
            "p_click": out_pc[:n],
            "p_like": out_pl[:n],
        },
        copy=False,  # keep the buffers (no second copy of the log at bench size)
    )
    del out_u, out_i, out_t, out_s, out_pos, out_h, out_d, out_c, out_l, out_pc, out_pl
    users_df = pd.DataFrame(
        {
            "user_id": truth["user_ids"],
            "age_bucket": pd.Categorical.from_codes(users["age"], categories=list(AGE_BUCKETS)),
            "country": pd.Categorical.from_codes(users["country"], categories=list(COUNTRIES)),
            "device": pd.Categorical.from_codes(users["device"], categories=list(DEVICES)),
        }
    )
    items_df = pd.DataFrame(
        {
            "item_id": truth["item_ids"],
            "category": pd.Categorical.from_codes(items["category"], categories=params["categories"]),
            "created_at": items["created_at"].astype(np.int64),
            "price": items["price"].astype(np.float64),
        }
    )
    links_df = pd.DataFrame({"src": truth["item_ids"][src], "dst": truth["item_ids"][dst]})
    params["stats"] = {
        "impressions": int(n),
        "sessions": int(n_sess),
        "ctr": float(interactions["click"].mean()) if n else 0.0,
        "like_rate": float(interactions["like"].mean()) if n else 0.0,
        "links": int(len(links_df)),
        "series": int(len(series_cat)),
        "follows": int(len(truth["user_fan_series"])),
        "followed_impression_share": float(followed.mean()) if n else 0.0,
        "followed_click_share": float(followed_clicks.mean()) if len(followed_clicks) else 0.0,
    }  # deterministic: no timings here (world.json must not change between identical runs)
    return World(cfg, int(seed), interactions, users_df, items_df, links_df, truth, params)


def synthesize(preset: str, seed: int, out: str | Path, overwrite: bool = False, **overrides) -> Dataset:
    """Generate the world of ``preset`` (fields replaced by ``overrides``) and save it to ``out``."""
    if preset not in PRESETS:
        raise ValueError(f"synthesize: unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(WorldConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"synthesize: unknown WorldConfig field(s) {unknown}; fields: {', '.join(sorted(fields))}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: output folder exists; pass overwrite=True to replace it")
    cfg = dataclasses.replace(PRESETS[preset], **overrides)
    return generate_world(cfg, seed).save(out, overwrite=overwrite)
