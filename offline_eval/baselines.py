"""Baseline recommenders, each a full-catalogue ranker with the shared contract (:class:`recsys.types.Ranker`).

Shapes: ``B`` requests (users) in a batch, ``N`` items in the catalogue, ``U`` users in the training rows,
``D`` latent factors.

Every baseline is fitted on the training interactions and scores the whole catalogue for a batch of requests:

* ``fit(train, catalog, schema)``: ``train`` holds interaction rows (all label columns) before the test window;
  the positives are the rows with ``train[schema.positive_label] > 0``.
* ``score(requests) -> (B, N) float64``; ``-inf`` means "never recommend".
* ``rank(requests, k) -> Results``: implemented once in :class:`Baseline` with :func:`recsys.types.top_k`
  (excluded items are removed there; ties go to the lower item index).

Scores of a request depend only on that request (user index, timestamp, history), never on the other requests
of the batch, so a batch scored in shards (locally or on Ray) gives bit-identical results. Products with the
user side avoid BLAS GEMM, whose rounding depends on the batch shape and thread count
(:func:`_rowwise_matmul`); scipy's sparse products are single-threaded and sum each row in index order.
Fitting is deterministic for a seed, except EASE's LAPACK inverse, whose last bits may vary with the BLAS
thread count: fit a model once and give the fitted object to every shard.

The models (``BASELINES``):

``random``      uniform scores from a counter-based hash of (seed, user index, request timestamp, item index)
``popularity``  positives per item in train, optionally time-decayed with a half-life
``itemknn``     item-item cosine over the binary user x item positive matrix, top ``n_neighbors`` per item
                (Sarwar et al., WWW 2001; Deshpande & Karypis, TOIS 2004)
``svd``         biased matrix factorisation by SGD (Funk / Koren et al., IEEE Computer 2009) via scikit-surprise
``ease``        Embarrassingly Shallow Autoencoder (Steck, WWW 2019), closed form
``als``         implicit-feedback matrix factorisation by alternating least squares (Hu, Koren & Volinsky,
                ICDM 2008) via the ``implicit`` library; a request's user factor is recomputed from its history
``bpr``         Bayesian personalised ranking (Rendle et al., UAI 2009) via ``implicit``; a request is scored
                by its user's trained factor (BPR has no fold-in), the items' learnt biases for unknown users

Cold requests: a request whose history has no known item gets all-zero scores from ``itemknn``, ``ease`` and ``als``
(``top_k`` then returns the lowest item indices); ``svd`` falls back to ``mu + b_i`` for unknown users, like
surprise's own ``predict``.
"""

from __future__ import annotations

import abc

import inspect
import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.collab import available_memory, binary_history as _binary_history, cosine_topn, ease_memory_bytes, \
    ease_weights
from recsys.configlib import CountScale
from recsys.data.catalog import Catalog
from recsys.data.schema import DatasetSchema, Kind
from recsys.types import Ragged, Requests, Results, top_k

logger = logging.getLogger(__name__)

SECONDS_PER_DAY = 86400.0


# ----------------------------------------------------------------------------------------------------------
# helpers


def _rowwise_matmul(a: np.ndarray, b: np.ndarray, row_block: int = 16, col_block: int = 3000) -> np.ndarray:
    """``a (B, D) @ b (D, N)`` with every output element summed as ``((a_0 b_0 + a_1 b_1) + a_2 b_2) + ...``.

    Each element's floating-point result therefore depends only on its own row of ``a`` and column of ``b``:
    never on the batch size, the row's position in the batch or the BLAS thread count. BLAS GEMM does not
    give that: with OpenBLAS 0.3.31 (numpy 2.4, 2 threads) a row scored alone (GEMV) and the same row inside a
    64-row block differ in the last bit, and inside a fixed-shape block the result still depends on the row's
    position through the thread partition -- sharded evaluation would not be bit-identical. Cost: D
    multiply and add numpy passes over small contiguous (row_block, col_block) tiles (non-power-of-two width
    to avoid cache-set conflicts); about 1-2 GFLOP/s, ~0.3 s for B=512, D=100, N=8192 on one core.
    """
    n_rows, n_dim = a.shape
    n_cols = b.shape[1]
    out = np.empty((n_rows, n_cols), dtype=np.float64)
    if n_dim == 0:
        out[:] = 0.0
        return out
    acc = np.empty((row_block, col_block), dtype=np.float64)
    tmp = np.empty((row_block, col_block), dtype=np.float64)
    for r0 in range(0, n_rows, row_block):
        r1 = min(r0 + row_block, n_rows)
        ar = a[r0:r1]
        for c0 in range(0, n_cols, col_block):
            c1 = min(c0 + col_block, n_cols)
            o, t = acc[: r1 - r0, : c1 - c0], tmp[: r1 - r0, : c1 - c0]
            np.multiply(ar[:, 0, None], b[0, c0:c1], out=o)
            for d in range(1, n_dim):
                np.multiply(ar[:, d, None], b[d, c0:c1], out=t)
                np.add(o, t, out=o)
            out[r0:r1, c0:c1] = o
    return out


def _positive_matrix(train: pd.DataFrame, catalog: Catalog, schema: DatasetSchema,
                     by_catalog: bool = False) -> sp.csr_matrix:
    """(U, N) binary CSR: the training users x their positives.

    By default users are taken from the rows themselves (factorised, not the catalogue) so that every training
    user counts as a distinct co-occurrence context, even one outside the catalogue's user vocabulary.
    ``by_catalog``: row u is the catalogue's user u instead (``catalog.users.size`` rows; the OOV row and users
    outside the vocabulary stay empty), for models that keep a factor per catalogue user.
    """
    pos = train[train[schema.positive_label].to_numpy() > 0]
    items = catalog.items.encode(pos[catalog.item_col].to_numpy())
    if by_catalog:
        users = catalog.users.encode(pos[catalog.user_col].to_numpy())
        ok = (users < catalog.n_users) & (items < catalog.n_items)
        n_users = catalog.users.size
    else:
        users, _ = pd.factorize(pos[catalog.user_col].to_numpy())
        ok = items < catalog.n_items
        n_users = int(users.max()) + 1 if len(users) else 0
    x = sp.csr_matrix(
        (np.ones(int(ok.sum()), dtype=np.float64), (users[ok].astype(np.int64), items[ok])),
        shape=(n_users, catalog.n_items),
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


POPULARITY_TIEBREAK = 1e-9


def _popularity_prior(x: sp.csr_matrix) -> np.ndarray:
    """(N,) a tie-breaker far below any real score difference: ``1e-9 * count_i / max count``.

    Neighbourhood models score 0 for every item when a request has no usable history; with this prior they
    fall back to the most popular items (STYLE.md: cold start is an explicit fallback, not index order).
    """
    counts = np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
    return POPULARITY_TIEBREAK * counts / max(counts.max(initial=0.0), 1.0)


def _check_train(train: pd.DataFrame, catalog: Catalog, schema: DatasetSchema, model: str) -> None:
    need = [catalog.user_col, catalog.item_col, catalog.time_col, schema.positive_label]
    missing = [c for c in need if c not in train.columns]
    if missing:
        raise ValueError(
            f"{model}.fit: training interactions lack column(s) {missing}; columns present: {list(train.columns)}"
        )


def _check_finite(model: str, **arrays: np.ndarray) -> None:
    for name, a in arrays.items():
        if a is not None and not np.all(np.isfinite(a)):
            raise RuntimeError(f"{model}: fitting produced non-finite values (NaN/inf) in {name}")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele, Lea & Flood, OOPSLA 2014) on a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _positive_int(value, name: str, model: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{model}: parameter {name!r} must be an integer >= 1, got {value!r}")
    return int(value)


def _positive_float(value, name: str, model: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value > 0:
        raise ValueError(f"{model}: parameter {name!r} must be a number > 0, got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------------------------------------
# base class


class Baseline(abc.ABC):
    """A full-catalogue ranker: ``fit`` on training rows, ``score`` a batch, ``rank`` = top-k of the scores.

    Constructors only store parameters; ``fit`` sets the learned state (``self.n_items`` among it).
    """

    name: str = "baseline"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.n_items: int | None = None

    @abc.abstractmethod
    def fit(self, train: pd.DataFrame, catalog: Catalog, schema: DatasetSchema) -> "Baseline":
        """Learn from the training rows (everything before the evaluated window)."""

    @abc.abstractmethod
    def score(self, requests: Requests) -> np.ndarray:
        """(B, N) float64 scores over the whole catalogue; ``-inf`` = never recommend."""

    def rank(self, requests: Requests, k: int) -> Results:
        """Top ``k`` items per request (excluded items removed; -1 / NaN padding when fewer are eligible)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"{self.name}.rank: k must be an integer >= 1, got {k!r}")
        scores = self.score(requests)
        assert scores.shape == (len(requests), self.n_items), (scores.shape, len(requests), self.n_items)
        items, vals = top_k(scores, int(k), requests.exclude)
        return Results(items=items, scores=vals, stage_scores={self.name: vals})

    def _check_fitted(self) -> None:
        if self.n_items is None:
            raise RuntimeError(f"{self.name}: call fit() before score() or rank()")

    def __repr__(self) -> str:
        params = {k: v for k, v in vars(self).items() if not k.startswith("_") and not isinstance(v, np.ndarray)}
        params = {k: v for k, v in params.items() if isinstance(v, (int, float, str, type(None)))}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


# ----------------------------------------------------------------------------------------------------------
# random


class RandomBaseline(Baseline):
    """Uniform scores in [0, 1): the top 53 bits of a SplitMix64 hash chain of (seed, u, t, i), divided by 2^53.

    Deterministic for the seed and independent of the batch: a request's scores depend only on its user index
    and timestamp (two cold users asking at the same second therefore get the same list).
    """

    name = "random"

    def fit(self, train: pd.DataFrame, catalog: Catalog, schema: DatasetSchema) -> "RandomBaseline":
        self.n_items = catalog.n_items
        return self

    def score(self, requests: Requests) -> np.ndarray:
        self._check_fitted()
        seed_key = _splitmix64(np.array([self.seed], dtype=np.int64).view(np.uint64))
        user_key = _splitmix64(seed_key ^ requests.users.astype(np.int64).view(np.uint64))
        req_key = _splitmix64(user_key ^ requests.timestamps.astype(np.int64).view(np.uint64))  # (B,)
        items = np.arange(self.n_items, dtype=np.uint64)
        h = _splitmix64(req_key[:, None] ^ _splitmix64(items)[None, :])  # (B, N)
        return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2.0**53)


# ----------------------------------------------------------------------------------------------------------
# popularity


class PopularityBaseline(Baseline):
    """Number of positives per item in train, the same list for every user.

    With ``half_life_days`` each positive at time ``t`` weighs ``0.5 ** ((t_ref - t) / half_life)`` where
    ``t_ref`` is the latest training timestamp, so recent engagement counts more.
    """

    name = "popularity"

    def __init__(self, seed: int = 0, half_life_days: float | None = None) -> None:
        super().__init__(seed)
        self.half_life_days = None if half_life_days is None else _positive_float(
            half_life_days, "half_life_days", self.name
        )
        self.counts: np.ndarray | None = None

    def fit(self, train: pd.DataFrame, catalog: Catalog, schema: DatasetSchema) -> "PopularityBaseline":
        _check_train(train, catalog, schema, self.name)
        pos = train[train[schema.positive_label].to_numpy() > 0]
        items = catalog.items.encode(pos[catalog.item_col].to_numpy())
        ok = items < catalog.n_items
        weights = None
        if self.half_life_days is not None and len(train):
            t_ref = float(train[catalog.time_col].to_numpy(dtype=np.int64).max())
            t = pos[catalog.time_col].to_numpy(dtype=np.int64)[ok].astype(np.float64)
            weights = 0.5 ** ((t_ref - t) / (self.half_life_days * SECONDS_PER_DAY))
        counts = np.bincount(items[ok], weights=weights, minlength=catalog.n_items).astype(np.float64)
        _check_finite(self.name, counts=counts)
        self.counts = counts
        self.n_items = catalog.n_items
        logger.info("%s: fitted on %d positives over %d items", self.name, int(ok.sum()), self.n_items)
        return self

    def score(self, requests: Requests) -> np.ndarray:
        self._check_fitted()
        return np.repeat(self.counts[None, :], len(requests), axis=0)


# ----------------------------------------------------------------------------------------------------------
# item kNN


class ItemKNNBaseline(Baseline):
    """Item-based kNN: ``score(u, i) = sum_{h in history(u)} sim(h, i)`` (history binarised).

    ``sim`` is the pruned cosine of :func:`cosine_topn` over the binary user x item positive matrix of train.
    Scores use ``requests.history`` (not the stored train rows), so a request with a fresh history is served
    as given. Vectorized: ``history (B, N) CSR @ sim (N, N) CSR``.
    """

    name = "itemknn"

    def __init__(self, seed: int = 0, n_neighbors: int = 100) -> None:
        super().__init__(seed)
        self.n_neighbors = _positive_int(n_neighbors, "n_neighbors", self.name)
        self.sim: sp.csr_matrix | None = None

    def fit(self, train: pd.DataFrame, catalog: Catalog, schema: DatasetSchema) -> "ItemKNNBaseline":
        _check_train(train, catalog, schema, self.name)
        x = _positive_matrix(train, catalog, schema)
        sim = cosine_topn(x, self.n_neighbors)
        _check_finite(self.name, similarities=sim.data)
        self.sim = sim
        self.prior = _popularity_prior(x)
        self.n_items = catalog.n_items
        logger.info("%s: %d users x %d items, %d similarities kept", self.name, x.shape[0], x.shape[1], sim.nnz)
        return self

    def score(self, requests: Requests) -> np.ndarray:
        self._check_fitted()
        hist = _binary_history(requests.history, self.n_items)
        return (hist @ self.sim).toarray().astype(np.float64, copy=False) + self.prior


# ----------------------------------------------------------------------------------------------------------
# SVD (scikit-surprise)


class SVDBaseline(Baseline):
    """Biased matrix factorisation fitted by scikit-surprise's ``SVD``: ``r̂(u, i) = mu + b_u + b_i + p_u · q_i``.

    Rating source, in order:

    1. the dataset's first graded label (e.g. ``rating``) over all training rows, with its declared range (or
       the observed min/max) as the rating scale; without one, its first count label (kind ``count``: plays,
       views) as ``log(1 + count)`` when ``counts="log"`` (default; raw counts of up to ~350k plays make the SGD
       diverge), while ``counts="binary"`` reads the count log like an implicit one (3. below);
    2. with ``use_impressions=True`` and a dataset with impressions, the positive label over all rows
       (1 engaged, 0 shown-not-engaged). Off by default: with a few percent CTR the regression mostly learns
       each item's logged CTR, which is exposure-biased and noisy for rarely shown items (measured on the
       demo world: no better than random on ndcg@10);
    3. otherwise each positive as 1 plus as many uniformly sampled (seeded) items the user never engaged with
       as 0.

    Surprise's raw ids are catalogue indices; its inner ids are mapped to catalogue indices once at fit, and
    the batch is scored from the factors: ``mu + b_u[u] + b_i + P[u] @ Q.T`` (B, N). Unknown users (the OOV
    index, or users without rows) have ``b_u = 0, p_u = 0`` (score ``mu + b_i``); items without rows have
    ``b_i = 0, q_i = 0`` -- the same as surprise's ``predict(..., clip=False)``. Scores are not clipped.
    """

    name = "svd"

    def __init__(
        self, seed: int = 0, n_factors: int = 100, n_epochs: int = 20, lr_all: float = 0.005, reg_all: float = 0.02,
        use_impressions: bool = False, counts: CountScale | str = CountScale.LOG,
    ) -> None:
        super().__init__(seed)
        self.use_impressions = bool(use_impressions)
        try:
            self.counts = CountScale(counts)
        except ValueError:
            raise ValueError(f"{self.name}: parameter 'counts' must be one of "
                             f"{', '.join(repr(c.value) for c in CountScale)}, got {counts!r}") from None
        self.n_factors = _positive_int(n_factors, "n_factors", self.name)
        self.n_epochs = _positive_int(n_epochs, "n_epochs", self.name)
        self.lr_all = _positive_float(lr_all, "lr_all", self.name)
        if isinstance(reg_all, bool) or not isinstance(reg_all, (int, float)) or reg_all < 0:
            raise ValueError(f"{self.name}: parameter 'reg_all' must be a number >= 0, got {reg_all!r}")
        self.reg_all = float(reg_all)
        self.algo = None
        self.rating_source: str | None = None
        self.mu = 0.0
        self.bu = self.bi = self.pu = self.qi = None

    def _ratings(self, train: pd.DataFrame, catalog: Catalog, schema: DatasetSchema):
        """(user index (R,), item index (R,), rating (R,), rating_scale, source description)."""
        spec = schema.tables["interactions"].columns
        graded = [name for name in schema.labels if spec[name].kind is Kind.GRADED]
        counts = [name for name in schema.labels if spec[name].kind is Kind.COUNT]
        users = catalog.users.encode(train[catalog.user_col].to_numpy())
        items = catalog.items.encode(train[catalog.item_col].to_numpy())
        if graded or (counts and self.counts is CountScale.LOG):
            label = graded[0] if graded else counts[0]
            r = train[label].to_numpy(dtype=np.float64)
            ok = (users < catalog.users.oov) & (items < catalog.n_items)
            if not graded:  # counts are heavy-tailed: SGD on raw play counts diverges (NaN); log(1 + count) does not
                r = np.log1p(r)
                scale = (0.0, float(r[ok].max())) if ok.any() else (0.0, 1.0)
                return users[ok], items[ok], r[ok], scale, f"count label {label!r} as log(1 + count)"
            if spec[label].range is not None:
                scale = tuple(float(v) for v in spec[label].range)
            else:
                scale = (float(r[ok].min()), float(r[ok].max())) if ok.any() else (0.0, 1.0)
            return users[ok], items[ok], r[ok], scale, f"graded label {label!r}"
        pos = train[schema.positive_label].to_numpy(dtype=np.float64) > 0
        if schema.has_impressions and self.use_impressions:
            ok = (users < catalog.users.oov) & (items < catalog.n_items)
            return users[ok], items[ok], pos[ok].astype(np.float64), (0.0, 1.0), (
                f"impressions ({schema.positive_label!r} 1 vs shown-not-engaged 0)"
            )
        ok = pos & (users < catalog.users.oov) & (items < catalog.n_items)
        pu, pi = users[ok], items[ok]
        neg_u, neg_i = self._sample_negatives(pu, pi, catalog.n_items)
        return (
            np.r_[pu, neg_u],
            np.r_[pi, neg_i],
            np.r_[np.ones(len(pu)), np.zeros(len(neg_u))],
            (0.0, 1.0),
            f"positives of {schema.positive_label!r} as 1 + {len(neg_u)} sampled non-interacted items as 0",
        )

    def _sample_negatives(self, users: np.ndarray, items: np.ndarray, n_items: int, max_rounds: int = 20):
        """One uniformly drawn item the user never engaged with per positive row (rejection sampling)."""
        rng = np.random.default_rng(self.seed)
        seen = np.unique(users * n_items + items)
        out = rng.integers(0, n_items, size=len(users))
        bad = np.isin(users * n_items + out, seen)
        for _ in range(max_rounds):
            if not bad.any():
                break
            out[bad] = rng.integers(0, n_items, size=int(bad.sum()))
            bad = np.isin(users * n_items + out, seen)
        keep = ~bad  # users who engaged with (nearly) every item get fewer negatives
        return users[keep], out[keep]

    def fit(self, train: pd.DataFrame, catalog: Catalog, schema: DatasetSchema) -> "SVDBaseline":
        import surprise

        _check_train(train, catalog, schema, self.name)
        users, items, ratings, scale, source = self._ratings(train, catalog, schema)
        if len(ratings) == 0:
            raise ValueError(f"{self.name}.fit: no training ratings ({source}) for users/items of the catalogue")
        df = pd.DataFrame({"user": users, "item": items, "rating": ratings})
        data = surprise.Dataset.load_from_df(df, surprise.Reader(rating_scale=scale))
        trainset = data.build_full_trainset()
        algo = surprise.SVD(
            n_factors=self.n_factors,
            n_epochs=self.n_epochs,
            lr_all=self.lr_all,
            reg_all=self.reg_all,
            random_state=self.seed,
        )
        algo.fit(trainset)
        # map inner ids -> catalogue indices once; row n_users (the OOV slot) and unseen users/items stay zero
        u_idx = np.array([trainset.to_raw_uid(i) for i in range(trainset.n_users)], dtype=np.int64)
        i_idx = np.array([trainset.to_raw_iid(i) for i in range(trainset.n_items)], dtype=np.int64)
        n_u, n_i = catalog.users.size, catalog.n_items
        bu, pu = np.zeros(n_u), np.zeros((n_u, self.n_factors))
        bi, qi = np.zeros(n_i), np.zeros((n_i, self.n_factors))
        bu[u_idx], pu[u_idx] = algo.bu, algo.pu
        bi[i_idx], qi[i_idx] = algo.bi, algo.qi
        mu = float(trainset.global_mean)
        _check_finite(self.name, mu=np.array([mu]), bu=bu, bi=bi, pu=pu, qi=qi)
        self.algo, self.rating_source = algo, source
        self.mu, self.bu, self.bi, self.pu, self.qi = mu, bu, bi, pu, qi
        self._qi_t = np.ascontiguousarray(qi.T)
        self.n_items = n_i
        logger.info(
            "%s: fitted on %d ratings (%s), %d users x %d items, scale %s",
            self.name, len(ratings), source, trainset.n_users, trainset.n_items, scale,
        )
        return self

    def score(self, requests: Requests) -> np.ndarray:
        self._check_fitted()
        u = requests.users
        if len(u) and (u.min() < 0 or u.max() >= len(self.bu)):
            raise ValueError(f"{self.name}.score: user index out of range [0, {len(self.bu) - 1}] (last is OOV)")
        return self.mu + self.bu[u][:, None] + self.bi[None, :] + _rowwise_matmul(self.pu[u], self._qi_t)


# ----------------------------------------------------------------------------------------------------------
# EASE


class EASEBaseline(Baseline):
    """EASE (Steck, WWW 2019): ``score = history (B, M) @ B (M, M)`` with ``B`` from :func:`ease_weights`.

    ``B`` is a dense M x M float64 matrix (8 M^2 bytes). With more than ``max_items`` catalogue items, only the
    ``max_items`` items with the most training positives are modelled (a warning is logged); every other item
    scores ``-inf`` and is never recommended (EASE scores may be negative, so 0 would rank unmodelled items
    above modelled ones), and their history entries are ignored. Before inverting, the memory it needs
    (:func:`ease_memory_bytes`) is checked against the memory available: too little is a ``MemoryError`` naming
    both and the ``max_items`` setting, raised before anything is allocated. The inversion runs on
    ``blas_threads`` BLAS threads.
    """

    name = "ease"

    def __init__(self, seed: int = 0, l2: float = 500.0, max_items: int = 20000, blas_threads: int = 1) -> None:
        super().__init__(seed)
        self.l2 = _positive_float(l2, "l2", self.name)
        self.max_items = _positive_int(max_items, "max_items", self.name)
        self.blas_threads = _positive_int(blas_threads, "blas_threads", self.name)
        self.items: np.ndarray | None = None  # (M,) catalogue indices modelled, or None for all
        self.weights: np.ndarray | None = None  # (M, M)

    def fit(self, train: pd.DataFrame, catalog: Catalog, schema: DatasetSchema) -> "EASEBaseline":
        _check_train(train, catalog, schema, self.name)
        x = _positive_matrix(train, catalog, schema)
        n = catalog.n_items
        self.prior = _popularity_prior(x)
        if n > self.max_items:
            counts = np.asarray(x.sum(axis=0)).ravel()
            order = np.lexsort((np.arange(n), -counts))  # most popular first, ties: lower index
            self.items = np.sort(order[: self.max_items])
            x = x[:, self.items]
            logger.warning(
                "%s: catalogue has %d items > max_items=%d; modelling the %d most popular, the rest score -inf",
                self.name, n, self.max_items, self.max_items,
            )
        else:
            self.items = None
        m = x.shape[1]
        need, avail = ease_memory_bytes(m), available_memory()
        if avail is not None and need > avail:
            raise MemoryError(
                f"{self.name}: {m:,} modelled items need {need / 2**30:.1f} GiB for the dense {m:,} x {m:,} Gram "
                f"matrix, {avail / 2**30:.1f} GiB is available; lower eval.baseline_params.ease.max_items"
            )
        logger.info("%s: inverting the %d x %d Gram matrix (%.2f GiB; %s available) with %d BLAS thread(s)",
                    self.name, m, m, need / 2**30, "?" if avail is None else f"{avail / 2**30:.1f} GiB",
                    self.blas_threads)
        weights = ease_weights(x, self.l2, blas_threads=self.blas_threads)
        _check_finite(self.name, weights=weights)
        self.weights = weights
        self.n_items = n
        logger.info("%s: %d users x %d modelled items, l2=%g", self.name, x.shape[0], x.shape[1], self.l2)
        return self

    def score(self, requests: Requests) -> np.ndarray:
        self._check_fitted()
        hist = _binary_history(requests.history, self.n_items)
        if self.items is None:
            return np.asarray(hist @ self.weights, dtype=np.float64) + self.prior
        out = np.full((len(requests), self.n_items), -np.inf)
        out[:, self.items] = hist[:, self.items] @ self.weights + self.prior[self.items]
        return out


# ----------------------------------------------------------------------------------------------------------
# ALS (implicit)


class ALSBaseline(Baseline):
    """Implicit-feedback ALS (Hu, Koren & Volinsky, ICDM 2008), fitted by the ``implicit`` library (a well-kept
    peer, the one independent measurements of this engine used; its conjugate-gradient solver is far faster
    than a hand-written one).

    Fit: the binary (U, N) positive matrix of train with confidence ``c = alpha`` on its positives,
    ``factors`` D, L2 ``regularization``, ``iterations`` sweeps, seeded. Score: each request's user factor is
    recomputed from its own history (implicit's exact least-squares ``recalculate_user``:
    ``x = (Y^T Y + lambda I + (alpha - 1) Y_h^T Y_h)^{-1} alpha Y_h^T 1``, Y the (N, D) item factors, h the
    history), so fresh and cold requests are served as given and a request's scores never depend on the batch;
    ``score = x Y^T`` (B, N) summed in a fixed order (:func:`_rowwise_matmul`).
    """

    name = "als"

    def __init__(self, seed: int = 0, factors: int = 64, regularization: float = 0.05, alpha: float = 10.0,
                 iterations: int = 15) -> None:
        super().__init__(seed)
        self.factors = _positive_int(factors, "factors", self.name)
        self.regularization = _positive_float(regularization, "regularization", self.name)
        self.alpha = _positive_float(alpha, "alpha", self.name)
        self.iterations = _positive_int(iterations, "iterations", self.name)
        self.model = None

    def fit(self, train: pd.DataFrame, catalog: Catalog, schema: DatasetSchema) -> "ALSBaseline":
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        _check_train(train, catalog, schema, self.name)
        x = _positive_matrix(train, catalog, schema)
        self.prior = _popularity_prior(x)
        with threadpool_limits(1, "blas"):  # implicit's advice (it checks at construction): BLAS single-threaded
            model = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization,
                                            alpha=self.alpha, iterations=self.iterations, random_state=self.seed,
                                            num_threads=1, calculate_training_loss=False, dtype=np.float32)
            model.fit(x.astype(np.float32), show_progress=False)
        _check_finite(self.name, item_factors=model.item_factors)
        self.model = model
        self.item_factors_t = np.ascontiguousarray(model.item_factors.T, dtype=np.float64)  # (D, N)
        self.n_items = catalog.n_items
        logger.info("%s: %d users x %d items, factors=%d, regularization=%g, alpha=%g, %d iterations", self.name,
                    x.shape[0], x.shape[1], self.factors, self.regularization, self.alpha, self.iterations)
        return self

    def user_factors(self, requests: Requests) -> np.ndarray:
        """(B, D) float64 user factors recomputed from each request's history (zero for an empty one)."""
        from threadpoolctl import threadpool_limits

        self._check_fitted()
        hist = _binary_history(requests.history, self.n_items).astype(np.float32)
        out = np.zeros((len(requests), self.factors), dtype=np.float64)
        rows = np.flatnonzero(np.diff(hist.indptr) > 0)
        if len(rows):
            with threadpool_limits(1, "blas"):  # one solve per row: a row's factor never depends on the others
                out[rows] = self.model.recalculate_user(np.arange(len(rows)), hist[rows])
        return out

    def score(self, requests: Requests) -> np.ndarray:
        return _rowwise_matmul(self.user_factors(requests), self.item_factors_t) + self.prior


# ----------------------------------------------------------------------------------------------------------
# BPR (implicit)


class BPRBaseline(Baseline):
    """Bayesian personalised ranking (Rendle et al., UAI 2009) fitted by the ``implicit`` library (the second
    matrix-factorisation peer the outside measurements of this engine used).

    Fit: SGD on the pairwise loss ``-log sigmoid(x_ui - x_uj)`` over the binary (U, N) positive matrix of
    train (users in the catalogue's order), ``factors`` D plus implicit's item-bias column, ``learning_rate``,
    L2 ``regularization``, ``iterations`` epochs, one thread and seeded (implicit's multi-threaded SGD is
    lock-free, so only one thread gives the same model twice). Score: ``x_u Y^T`` (B, N) with the request
    user's trained factor ``x_u`` (D + 1; its last entry is 1, the bias). BPR has no fold-in (implicit does not
    offer one for it), so a request is scored by its user's factor as of training: a user without training
    positives, or outside the catalogue, gets ``(0, ..., 0, 1)`` (the items' learnt biases), and a request's
    history after training does not change its scores. Scores never depend on the batch.
    """

    name = "bpr"

    def __init__(self, seed: int = 0, factors: int = 64, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 100) -> None:
        super().__init__(seed)
        self.factors = _positive_int(factors, "factors", self.name)
        self.learning_rate = _positive_float(learning_rate, "learning_rate", self.name)
        self.regularization = _positive_float(regularization, "regularization", self.name)
        self.iterations = _positive_int(iterations, "iterations", self.name)
        self.model = None

    def fit(self, train: pd.DataFrame, catalog: Catalog, schema: DatasetSchema) -> "BPRBaseline":
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        _check_train(train, catalog, schema, self.name)
        x = _positive_matrix(train, catalog, schema, by_catalog=True)  # the OOV row is never a training user
        if x.nnz == 0:
            raise ValueError(f"{self.name}.fit: no training positives ({schema.positive_label!r} > 0) for users and "
                             "items of the catalogue")
        model = BayesianPersonalizedRanking(factors=self.factors, learning_rate=self.learning_rate,
                                            regularization=self.regularization, iterations=self.iterations,
                                            num_threads=1, random_state=self.seed, dtype=np.float32)
        model.fit(x.astype(np.float32), show_progress=False)
        _check_finite(self.name, item_factors=model.item_factors, user_factors=model.user_factors)
        uf = np.asarray(model.user_factors, dtype=np.float64)
        cold = np.zeros(uf.shape[1])
        cold[-1] = 1.0  # implicit's user factors end in 1: the item-bias column
        uf[np.diff(x.indptr) == 0] = cold
        self.model, self.user_factors = model, uf
        self.item_factors_t = np.ascontiguousarray(np.asarray(model.item_factors, dtype=np.float64).T)  # (D+1, N)
        self.prior = _popularity_prior(x)
        self.n_items = catalog.n_items
        logger.info("%s: %d users x %d items, factors=%d, learning_rate=%g, regularization=%g, %d iterations",
                    self.name, int((np.diff(x.indptr) > 0).sum()), x.shape[1], self.factors, self.learning_rate,
                    self.regularization, self.iterations)
        return self

    def score(self, requests: Requests) -> np.ndarray:
        self._check_fitted()
        u = np.asarray(requests.users, dtype=np.int64)
        n = len(self.user_factors)
        if len(u) and (u.min() < 0 or u.max() >= n):
            raise ValueError(f"{self.name}.score: user index out of range [0, {n - 1}] (last is OOV)")
        return _rowwise_matmul(self.user_factors[u], self.item_factors_t) + self.prior


# ----------------------------------------------------------------------------------------------------------
# registry


BASELINES: dict[str, type] = {
    "random": RandomBaseline,
    "popularity": PopularityBaseline,
    "itemknn": ItemKNNBaseline,
    "svd": SVDBaseline,
    "ease": EASEBaseline,
    "als": ALSBaseline,
    "bpr": BPRBaseline,
}


def make_baseline(name: str, seed: int = 0, **params) -> Baseline:
    """Build the baseline called ``name`` (a key of :data:`BASELINES`) with ``seed`` and model ``params``."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known baselines: {', '.join(BASELINES)}")
    cls = BASELINES[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "seed")]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"baseline {name!r}: unknown parameter(s) {unknown}; allowed: {', '.join(allowed) or '(none)'}"
        )
    return cls(seed=seed, **params)
