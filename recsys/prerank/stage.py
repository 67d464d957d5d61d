"""The pre-ranker: a LightGBM LambdaMART model over the shared features of the retrieval candidates.

Shapes: B requests, C candidates per request, F features, R training rows (valid (request, candidate) pairs),
G query groups (one per training user).

**Training data** (:func:`build_ranking_data`), on the pre-ranker's window, with the same protocol as the
offline evaluator (:mod:`offline_eval.evaluator`):

* one request per user of the window with at least one engagement, at the time of the user's **first event
  in the window** (any row, impression or engagement), with the context of that event and the history of the
  user's engagements before the window (``past_df``; seen items excluded);
* candidates: ``upstream.candidates(requests)``, the engine that serves the stage (retrieval at the funnel's
  ``retrieve_k`` with its source quotas, and any scoring stage before this one): exactly the pool it is served;
* label of a candidate: its graded gain in the window, ``max over the (user, item) engagements of
  sum_l w_l * label_l`` (``gains``; default the positive label with weight 1), 0 if not engaged. Distinct gains
  become integer relevance levels and LightGBM's ``label_gain`` is set to the gains themselves, so the
  validation NDCG uses the same (linear) gains as the evaluator;
* with ``include_impressions`` (off by default) on a dataset with impressions, the items shown to the user in
  the window and not engaged (and not already candidates) are appended to the *training* users' candidates as
  extra negatives (source ``impression``). No source returned them, so the features that describe the
  retrieval (:data:`recsys.features.CANDIDATE_SOURCE_FEATURES`: ``src_*``, ``n_sources``, ``ann_score``,
  ``ann_rank``) would take values on them that never occur at serving (all source flags 0; a two-tower score
  below the ANN list's cut), and the model would learn "no source flag => negative". So impressions are only
  appended to source-independent features: the default features then leave those out, and a
  ``prerank.features`` list naming one of them is an error. (Making them NaN instead would not help: LightGBM
  sends missing values down their own branch, so NaN is as telling as 0.) The default keeps the source
  features and no impressions: the rows are then exactly the retrieval's candidates, what the stage serves.
  Validation users keep the retrieval candidates only, so the validation NDCG measures what the stage sees
  when serving;
* groups without a positive are dropped (they carry no ranking signal).

**Model**: LightGBM ``lambdarank`` (Burges 2010, "From RankNet to LambdaRank to LambdaMART: an overview",
MSR-TR-2010-82; Ke et al. 2017), one query group per user, early stopping on NDCG@``eval_at`` of a seeded
user-level holdout (``valid_fraction``), ``deterministic=True`` with ``force_col_wise`` and the configured seed
and thread count, so a fit is reproducible. The kept model is cut to the best iteration.

**Scoring**: ``score(requests, cands) -> {"score": (B, C) float64}``, -inf at padding.

**Saved folder** (no pickle)::

    prerank.json        format version, PrerankConfig, label gains, validation metrics
    features.json       the feature names in model column order
    model.txt           LightGBM text model (Booster.save_model)
    features/           the FeatureContext (see recsys.features)

:meth:`PrerankStage.load` refuses a model whose feature names differ from ``features.json`` or name a
feature the registry does not have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recsys.configlib import ConfigError, from_dict, to_dict
from recsys.data.catalog import Catalog, positives
from recsys.data.schema import Dataset
from recsys.deadline import checkpoint
from recsys.collab import pair_lookup as _pair_lookup
from recsys.features import CANDIDATE_SOURCE_FEATURES, STAGE_SCORE_FEATURES, FeatureConfig, FeatureContext, \
    FeatureKind, assemble, available_features, resolve
from recsys.graph import GraphConfig
from recsys.io import read_stage_meta, write_json
from recsys.stages.base import FitContext
from recsys.types import Ragged, Requests

if TYPE_CHECKING:  # not imported at run time: importing recsys.retrieval loads torch and faiss
    from recsys.retrieval.sources import Candidates

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
IMPRESSION_SOURCE = "impression"
_CHUNK = 512  # requests per retrieve + assemble block while building the training data


@dataclasses.dataclass(frozen=True)
class PrerankConfig:
    """The pre-ranker (``prerank`` section of the engine config).

    num_leaves, learning_rate, n_estimators, min_data_in_leaf   LightGBM tree / boosting parameters
    early_stopping_rounds  stop when validation NDCG@eval_at has not improved for this many rounds
    num_threads        LightGBM threads (training and prediction). Default 1: on shared or oversubscribed cores
                       OpenMP's spin-waiting made 2-thread training 25-140x slower than 1 thread in our
                       measurements (set OMP_WAIT_POLICY=passive before start-up when using more threads)
    features           feature names (:mod:`recsys.features`), in model column order; empty: all available
    max_train_users    0: every user of the window; else a seeded sample of that many
    valid_fraction     seeded fraction of the users held out for early stopping (0: no early stopping)
    gains              {label: weight}: graded gain of an engaged item (empty: the positive label, weight 1)
    eval_at            NDCG cut-off reported in ``valid_metrics`` (``ndcg@eval_at``)
    objective_at       the rank the objective and early stopping care about: LightGBM's
                       ``lambdarank_truncation_level`` and the NDCG cut-off of early stopping; 0 (default): the
                       stage's cut-off in the funnel (``prerank_k``), since its job is to keep, out of the
                       retrieved candidates, what the heavy ranker will promote (LightGBM's own default
                       truncation, 30, ignores every pair below rank 30)
    seed               sampling, holdout and LightGBM seed
    include_impressions  add shown-not-engaged items of the window as extra training negatives (only with
                       source-independent features; see the module docstring)
    graph              the item graph of the features (co-engagement + links)
    feature_params     the features' own parameters (PPR, co-engagement, CTR smoothing, item columns)
    """

    num_leaves: int = 31
    learning_rate: float = 0.05
    n_estimators: int = 300
    min_data_in_leaf: int = 20
    early_stopping_rounds: int = 100
    num_threads: int = 1
    features: tuple[str, ...] = ()
    max_train_users: int = 0
    valid_fraction: float = 0.2
    gains: dict[str, float] = dataclasses.field(default_factory=dict)
    eval_at: int = 10
    objective_at: int = 0
    seed: int = 0
    include_impressions: bool = False
    graph: GraphConfig = dataclasses.field(default_factory=GraphConfig)
    feature_params: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)

    def __post_init__(self) -> None:
        for name, ok, what in (
            ("num_leaves", self.num_leaves >= 2, ">= 2"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("n_estimators", self.n_estimators >= 1, ">= 1"),
            ("min_data_in_leaf", self.min_data_in_leaf >= 1, ">= 1"),
            ("early_stopping_rounds", self.early_stopping_rounds >= 1, ">= 1"),
            ("num_threads", self.num_threads >= 1, ">= 1"),
            ("max_train_users", self.max_train_users >= 0, ">= 0"),
            ("valid_fraction", 0.0 <= self.valid_fraction < 1.0, "in [0, 1)"),
            ("eval_at", self.eval_at >= 1, ">= 1"),
            ("objective_at", self.objective_at >= 0, ">= 0 (0: the stage's funnel cut-off)"),
            ("gains", all(w >= 0 for w in self.gains.values()), "a mapping of label -> weight >= 0"),
        ):
            if not ok:
                raise ConfigError(f"prerank.{name}: must be {what}, got {getattr(self, name)!r}")
        if len(set(self.features)) != len(self.features):
            raise ConfigError(f"prerank.features: duplicate names in {list(self.features)}")


# ------------------------------------------------------------------------------------------------------------
# Training data
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RankingData:
    """Query-grouped training rows.

    X          (R, F) float32 features (NaN = missing); ``names`` / ``kinds`` per column
    y          (R,) int32 relevance level (index into ``label_gain``; 0 = not engaged)
    group      (G,) int64 rows per query (consecutive)
    user_ids   (G,) external user id of each query
    position   (R,) int64 column of the candidate in the retrieval list (the input order)
    extra      (R,) bool an impression negative appended after the retrieval candidates
    label_gain (L,) float64 gain of each relevance level
    item       (R,) int64 catalogue index of each row's candidate (None on data built before it was recorded)
    """

    X: np.ndarray
    y: np.ndarray
    group: np.ndarray
    user_ids: np.ndarray
    position: np.ndarray
    extra: np.ndarray
    names: list[str]
    kinds: list[FeatureKind]
    label_gain: list[float]
    item: np.ndarray | None = None

    @property
    def offsets(self) -> np.ndarray:
        return np.r_[0, np.cumsum(self.group)].astype(np.int64)

    def take_groups(self, groups: np.ndarray, drop_extra: bool = False) -> "RankingData":
        """The queries ``groups`` (G',) (in that order), optionally without the impression extras."""
        groups = np.asarray(groups, dtype=np.int64)
        off = self.offsets
        lens = self.group[groups]
        rows = np.repeat(off[groups] - np.r_[0, np.cumsum(lens)[:-1]], lens) + np.arange(int(lens.sum()))
        row_group = np.repeat(np.arange(len(groups)), lens)
        if drop_extra:
            keep = ~self.extra[rows]
            rows, row_group = rows[keep], row_group[keep]
        new_group = np.bincount(row_group, minlength=len(groups)).astype(np.int64)
        return RankingData(self.X[rows], self.y[rows], new_group, self.user_ids[groups], self.position[rows],
                           self.extra[rows], list(self.names), list(self.kinds), list(self.label_gain),
                           None if self.item is None else self.item[rows])

    def with_columns(self, extra_X: np.ndarray, names: list[str], kinds: list[FeatureKind]) -> "RankingData":
        """The same rows with columns appended (e.g. random features for feature selection)."""
        return dataclasses.replace(self, X=np.concatenate([self.X, extra_X.astype(np.float32)], axis=1),
                                   names=self.names + list(names), kinds=self.kinds + list(kinds))


def concat_ranking_data(parts: list[RankingData]) -> RankingData:
    """The query groups of ``parts`` one after another (same columns; e.g. the rows of several cut points)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for p in parts[1:]:
        if p.names != first.names or p.label_gain != first.label_gain:
            raise ValueError(f"concat_ranking_data: parts differ in columns or gains ({first.names} vs {p.names})")
    cat = lambda f: np.concatenate([getattr(p, f) for p in parts])  # noqa: E731
    item = None if any(p.item is None for p in parts) else cat("item")
    return RankingData(cat("X"), cat("y"), cat("group"), cat("user_ids"), cat("position"), cat("extra"),
                       list(first.names), list(first.kinds), list(first.label_gain), item)


def _gains(ds: Dataset, cfg: PrerankConfig) -> dict[str, float]:
    labels = ds.schema.labels
    gains = dict(cfg.gains) or {ds.schema.positive_label: 1.0}
    bad = [g for g in gains if g not in labels]
    if bad:
        raise ValueError(f"prerank.gains: {bad} are not label columns of interactions; labels: {labels}")
    return gains


def _append_extras(cands: Candidates, extra: Ragged, requests: Requests, retrieval) -> Candidates:
    """Candidates with each row's ``extra`` items appended (source ``impression``); ``retrieval`` (the
    candidate stage) gives them their two-tower score."""
    from recsys.retrieval.sources import Candidates

    b = len(cands)
    lens = extra.lengths()
    width = int(lens.max(initial=0))
    if width == 0:
        return cands
    ext = np.full((b, width), -1, dtype=np.int64)
    rows = np.repeat(np.arange(b), lens)
    cols = np.arange(len(extra.values)) - np.repeat(extra.indptr[:-1], lens)
    ext[rows, cols] = extra.values
    names = list(cands.names) + [IMPRESSION_SOURCE]
    src = np.where(ext >= 0, len(names) - 1, -1).astype(cands.source.dtype)
    pad = np.full((b, width), np.nan, dtype=np.float32)
    scores = {k: np.concatenate([np.asarray(v, dtype=np.float32), pad], axis=1) for k, v in cands.scores.items()}
    user_vectors = getattr(retrieval, "user_vectors", None)
    item_vectors = getattr(retrieval, "item_vectors", None)
    if "ann" in scores and callable(user_vectors) and item_vectors is not None:
        warm = ~np.asarray(retrieval.is_cold(requests), bool) if hasattr(retrieval, "is_cold") else np.ones(b, bool)
        w = np.flatnonzero(warm & (lens > 0))
        if len(w):
            u = user_vectors(requests.take(w))  # (b', D)
            v = np.asarray(item_vectors)[np.clip(ext[w], 0, None)]  # (b', E, D)
            s = np.einsum("bd,bed->be", u, v).astype(np.float32)
            scores["ann"][w, cands.items.shape[1]:] = np.where(ext[w] >= 0, s, np.nan)
    return Candidates(np.concatenate([cands.items, ext], axis=1), np.concatenate([cands.source, src], axis=1),
                      scores, names)


def build_ranking_data(
    ds: Dataset,
    catalog: Catalog,
    upstream,
    ctx: FeatureContext,
    window_df: pd.DataFrame,
    past_df: pd.DataFrame,
    cfg: PrerankConfig,
    names: list[str] | None = None,
    extra_users: np.ndarray | None = None,
    all_users: bool = False,
    all_groups: bool = False,
) -> RankingData:
    """The query-grouped training rows of ``window_df`` (see the module docstring).

    ``all_users``: evaluation rows not selected on their labels: one request per user with any event in the
    window (not only users with an engagement), groups without a positive kept (``cfg.max_train_users``
    still samples the users).

    ``upstream`` is the :class:`recsys.engine.Engine` that serves the stage (``candidates(requests)``);
    ``past_df`` the interactions before the window (engagements are taken from it). ``extra_users``: the
    external ids of the users that get impression negatives (default: all, when ``include_impressions``).
    ``all_groups``: keep the queries without a positive among their candidates too (the table the stage is
    served, not only the one it can learn from: :mod:`recsys.experiments.drift`).
    """
    label = ds.schema.positive_label
    ucol, icol, tcol = catalog.user_col, catalog.item_col, catalog.time_col
    for what, df in (("window_df", window_df), ("past_df", past_df)):
        missing = [c for c in (ucol, icol, tcol, label) if c not in df.columns]
        if missing:
            raise ValueError(f"build_ranking_data: {what} lacks column(s) {missing}")
    gains = _gains(ds, cfg)
    impressions = cfg.include_impressions and ds.schema.has_impressions
    names = list(names) if names is not None else (list(cfg.features) or [
        f for f in available_features(ctx) if f not in STAGE_SCORE_FEATURES  # not its own score
        and not (impressions and f in CANDIDATE_SOURCE_FEATURES)])
    if impressions and set(names) & set(CANDIDATE_SOURCE_FEATURES):
        raise ValueError(
            f"prerank.include_impressions: features {[f for f in names if f in CANDIDATE_SOURCE_FEATURES]} describe "
            "the candidate source, which an appended impression does not have (a pattern serving never shows); "
            "drop them from prerank.features or set prerank.include_impressions: false")
    kinds = [f.kind for f in resolve(names, ctx)]
    n = catalog.n_items

    win = window_df.iloc[np.argsort(window_df[tcol].to_numpy(), kind="stable")]
    pos = positives(win, label)
    g = np.zeros(len(pos), dtype=np.float64)
    for name, w in gains.items():
        g += float(w) * pos[name].to_numpy(dtype=np.float64)
    pi = catalog.items.encode(pos[icol].to_numpy())
    keep = (pi < n) & (g > 0)
    pos_users = pd.unique(pos[ucol].to_numpy()[keep])
    first = win.drop_duplicates(ucol, keep="first")
    if not all_users:
        first = first[first[ucol].isin(pos_users)]
    if cfg.max_train_users and len(first) > cfg.max_train_users:
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(first), cfg.max_train_users, replace=False))
        first = first.iloc[pick]
    user_ids = first[ucol].to_numpy()
    if len(user_ids) == 0:
        raise ValueError(f"build_ranking_data: no user of the window has an engagement ({label!r} > 0)")
    context = {c: first[c].to_numpy() for c in ds.schema.context_columns if c in first.columns}
    requests = catalog.requests(user_ids, first[tcol].to_numpy(np.int64), positives(past_df, label),
                                exclude_seen=True, context=context)

    # (request row, item) -> max gain; and (request row, item) shown in the window
    uindex = pd.Index(user_ids)
    pr = uindex.get_indexer(pos[ucol].to_numpy())
    ok = keep & (pr >= 0)
    gkeys = pr[ok].astype(np.int64) * (n + 1) + pi[ok]
    order = np.lexsort((g[ok], gkeys))
    gkeys, gvals = gkeys[order], g[ok][order]
    last = np.r_[gkeys[1:] != gkeys[:-1], True] if len(gkeys) else np.zeros(0, bool)
    gkeys, gvals = gkeys[last], gvals[last]
    label_gain = [0.0] + sorted(set(gvals.tolist()))
    level = np.searchsorted(np.asarray(label_gain), gvals).astype(np.int32)

    extra_rows = None
    if impressions:
        r_all = uindex.get_indexer(win[ucol].to_numpy())
        i_all = catalog.items.encode(win[icol].to_numpy())
        ok_all = (r_all >= 0) & (i_all < n)
        if extra_users is not None:
            ok_all &= np.isin(r_all, uindex.get_indexer(np.asarray(extra_users)))
        ikeys = np.unique(r_all[ok_all].astype(np.int64) * (n + 1) + i_all[ok_all])
        hist = requests.history
        hkeys = np.sort(np.repeat(np.arange(len(hist), dtype=np.int64), hist.lengths()) * (n + 1) + hist.values)
        ikeys = ikeys[~np.isin(ikeys, gkeys) & ~np.isin(ikeys, hkeys)]  # shown, not engaged, not seen before
        extra_rows = (ikeys // (n + 1), ikeys % (n + 1))

    Xs, ys, groups, positions, extras, row_items = [], [], [], [], [], []
    for start in range(0, len(requests), _CHUNK):
        rows = np.arange(start, min(start + _CHUNK, len(requests)))
        req = requests.take(rows)
        cands = upstream.candidates(req)
        n_ret = cands.items.shape[1]
        if extra_rows is not None:
            sel = (extra_rows[0] >= rows[0]) & (extra_rows[0] <= rows[-1])
            er, ei = extra_rows[0][sel] - rows[0], extra_rows[1][sel]
            isin_c = np.isin(er * (n + 1) + ei, (np.arange(len(rows))[:, None] * (n + 1) + cands.items).ravel())
            er, ei = er[~isin_c], ei[~isin_c]  # sorted by (row, item): at most n_ret per row, lowest first
            per_row = np.bincount(er, minlength=len(rows))
            rank = np.arange(len(er)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
            keep_e = rank < n_ret
            cnt = np.minimum(per_row, n_ret)
            cands = _append_extras(cands, Ragged(np.r_[0, np.cumsum(cnt)], ei[keep_e]), req, upstream.retrieval)
        feats = assemble(req, cands, ctx, names)  # (b, C, F)
        items = cands.items
        valid = (items >= 0) & (items < n)
        q = (rows[:, None].astype(np.int64) * (n + 1) + np.where(valid, items, n))
        lv = _pair_lookup(gkeys, level, q, 0)
        lv[~valid] = 0
        Xs.append(feats[valid])
        ys.append(lv[valid])
        groups.append(valid.sum(axis=1))
        col = np.broadcast_to(np.arange(items.shape[1]), items.shape)
        positions.append(col[valid])
        extras.append((col >= n_ret)[valid])
        row_items.append(items[valid])
    group = np.concatenate(groups).astype(np.int64)
    data = RankingData(np.concatenate(Xs), np.concatenate(ys).astype(np.int32), group, user_ids,
                       np.concatenate(positions).astype(np.int64), np.concatenate(extras), names, kinds, label_gain,
                       np.concatenate(row_items).astype(np.int64))
    has_pos = np.bincount(np.repeat(np.arange(len(group)), group), weights=data.y > 0, minlength=len(group)) > 0
    logger.info(
        "pre-ranker data: %d users, %d with a positive among the candidates (recall of the window's users), "
        "%d rows (%d impression negatives), %d features",
        len(group), int(has_pos.sum()), len(data.y), int(data.extra.sum()), len(names),
    )
    return data if all_users or all_groups else data.take_groups(np.flatnonzero(has_pos))


# ------------------------------------------------------------------------------------------------------------
# NDCG (the same definition as LightGBM's ndcg metric with label_gain)
# ------------------------------------------------------------------------------------------------------------


def group_recall(score: np.ndarray, y: np.ndarray, group: np.ndarray, k: int) -> np.ndarray:
    """(G,) recall@k per query: the fraction of its positive rows (y > 0) among its k best scores (descending;
    ties by row order); NaN for a query without a positive."""
    off = np.r_[0, np.cumsum(group)]
    out = np.full(len(group), np.nan)
    for q in range(len(group)):
        s, t = score[off[q]:off[q + 1]], y[off[q]:off[q + 1]] > 0
        if t.any():
            top = np.argsort(-s, kind="stable")[:k]
            out[q] = t[top].sum() / t.sum()
    return out


def group_ndcg(score: np.ndarray, y: np.ndarray, group: np.ndarray, label_gain, k: int) -> np.ndarray:
    """(G,) NDCG@k per query: DCG = sum_{r<k} gain[y_(r)] / log2(r + 2) over the rows sorted by score
    (descending; ties by row order), divided by the DCG of the ideal order (Jarvelin & Kekalainen 2002);
    1 for a query without a positive (LightGBM's convention)."""
    gain = np.asarray(label_gain, dtype=np.float64)[y]
    off = np.r_[0, np.cumsum(group)]
    out = np.ones(len(group))
    for q in range(len(group)):  # one vectorized sort per query; G is at most the number of training users
        s, gq = score[off[q]:off[q + 1]], gain[off[q]:off[q + 1]]
        disc = 1.0 / np.log2(np.arange(min(k, len(gq))) + 2.0)
        ideal = np.sort(gq)[::-1][:k] @ disc
        if ideal > 0:
            out[q] = gq[np.argsort(-s, kind="stable")[:k]] @ disc / ideal
    return out


# ------------------------------------------------------------------------------------------------------------
# LightGBM
# ------------------------------------------------------------------------------------------------------------


def lgb_params(cfg: PrerankConfig, label_gain: list[float], seed: int | None = None, at: int | None = None) -> dict:
    """LightGBM parameters; ``at``: the objective's rank (``lambdarank_truncation_level`` and early stopping's
    NDCG cut-off), default ``cfg.objective_at`` or, when that is 0, ``cfg.eval_at``."""
    at = at or cfg.objective_at or cfg.eval_at
    return {
        "objective": "lambdarank",
        "metric": "ndcg",
        "ndcg_eval_at": [at],
        "lambdarank_truncation_level": at,
        "label_gain": list(label_gain),
        "num_leaves": cfg.num_leaves,
        "learning_rate": cfg.learning_rate,
        "min_data_in_leaf": cfg.min_data_in_leaf,
        "num_threads": cfg.num_threads,
        "deterministic": True,
        "force_col_wise": True,
        "seed": cfg.seed if seed is None else seed,
        "verbose": -1,
    }


def train_booster(train: RankingData, valid: RankingData | None, cfg: PrerankConfig, seed: int | None = None,
                  at: int | None = None):
    """Fit LightGBM lambdarank on ``train`` (early stopping on ``valid`` when given and non-empty); returns
    (booster cut to its best iteration, {"best_iteration", "valid_ndcg" history})."""
    import lightgbm as lgb

    if len(train.group) == 0:
        raise ValueError("pre-ranker: no training query has a positive among its candidates; "
                         "raise the funnel's retrieval cut-off (engine.funnel) or check the window")
    cat_idx = [j for j, k in enumerate(train.kinds) if k is FeatureKind.CATEGORICAL]
    params = lgb_params(cfg, train.label_gain, seed, at)
    dtrain = lgb.Dataset(train.X, train.y, group=train.group, feature_name=list(train.names),
                         categorical_feature=cat_idx, free_raw_data=True, params={"verbose": -1})
    callbacks, valid_sets, record = [], [], {}
    if valid is not None and len(valid.group):
        dvalid = lgb.Dataset(valid.X, valid.y, group=valid.group, reference=dtrain)
        valid_sets = [dvalid]
        callbacks = [lgb.early_stopping(cfg.early_stopping_rounds, verbose=False), lgb.record_evaluation(record)]
    booster = lgb.train(params, dtrain, num_boost_round=cfg.n_estimators, valid_sets=valid_sets,
                        valid_names=["valid"] if valid_sets else None, callbacks=callbacks)
    best = booster.best_iteration if valid_sets and booster.best_iteration > 0 else booster.current_iteration()
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    hist = record.get("valid", {}).get(f"ndcg@{params['ndcg_eval_at'][0]}", [])
    return booster, {"best_iteration": int(best), "valid_ndcg_history": [float(v) for v in hist]}


def split_groups(n_groups: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded user-level holdout: (train group indices, valid group indices), each sorted."""
    perm = np.random.default_rng(seed).permutation(n_groups)
    n_valid = int(round(valid_fraction * n_groups))
    if valid_fraction > 0 and n_groups >= 2:
        n_valid = min(max(n_valid, 1), n_groups - 1)
    else:
        n_valid = 0
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


# ------------------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------------------


class PrerankStage:
    """LightGBM lambdarank over :func:`recsys.features.assemble`; a :class:`recsys.engine.ScoringStage`."""

    name = "prerank"

    def __init__(self, cfg: PrerankConfig | None = None) -> None:
        self.cfg: PrerankConfig | None = cfg
        self.ctx: FeatureContext | None = None
        self.booster = None
        self.feature_names: list[str] = []
        self.label_gain: list[float] = []
        self.valid_metrics: dict = {}

    def fit(self, ctx: FitContext) -> "PrerankStage":
        """Train on ``ctx.window_df`` (the pre-ranker's window) with histories from ``ctx.history``, on the
        candidates ``ctx.upstream`` serves, with features as of the window's start (``ctx.features``); with
        several cut points (``ctx.cuts``) on the rows of each, pooled (one query group per user and cut)."""
        if not isinstance(self.cfg, PrerankConfig):
            raise TypeError(f"PrerankStage: the constructor needs a PrerankConfig, got {type(self.cfg).__name__}")
        cuts = []
        for c in ctx.cuts:
            if c.upstream is None:
                raise ValueError("PrerankStage.fit: the fit context has no upstream engine (the candidates it "
                                 "serves)")
            cuts.append((c.upstream, c.feature_context(self.cfg), c.window_df, c.history))
        return self._fit(ctx.ds, ctx.catalog, cuts, self.cfg, ctx.k)

    def _fit(self, ds: Dataset, catalog: Catalog, cuts: list, cfg: PrerankConfig,
             cutoff: int | None = None) -> "PrerankStage":
        """``cuts``: [(upstream engine, feature context, window events, events before the window)], oldest
        first; the last cut's feature context is kept (the serving snapshot replaces it)."""
        label = ds.schema.positive_label
        ucol = catalog.user_col
        # one user-level holdout over every cut: a validation user's groups are held out at every cut point
        all_users = pd.unique(np.concatenate([w[ucol].to_numpy() for _, _, w, _ in cuts]))
        tr_users, va_users = split_groups(len(all_users), cfg.valid_fraction, cfg.seed)
        extra_users = all_users[tr_users]  # impression negatives for training users only
        parts = [build_ranking_data(ds, catalog, up, fctx, w, past, cfg, extra_users=extra_users)
                 for up, fctx, w, past in cuts]
        data = concat_ranking_data(parts)
        ctx = cuts[-1][1]
        is_valid = np.isin(data.user_ids, all_users[va_users])
        train = data.take_groups(np.flatnonzero(~is_valid))
        valid = data.take_groups(np.flatnonzero(is_valid), drop_extra=True)
        at = cfg.objective_at or cutoff or cfg.eval_at
        booster, info = train_booster(train, valid, cfg, at=at)
        self.cfg, self.ctx, self.booster = cfg, ctx, booster
        self.feature_names, self.label_gain = list(data.names), list(data.label_gain)
        k = cfg.eval_at
        metrics = {"best_iteration": info["best_iteration"], "train_users": int(len(train.group)),
                   "train_rows": int(len(train.y)), "impression_negatives": int(train.extra.sum()),
                   "valid_users": int(len(valid.group)), "cut_points": len(cuts), "label_gain": self.label_gain,
                   "positive_label": label,
                   "objective_at": int(at)}
        if len(valid.group):
            pred = booster.predict(valid.X, num_threads=cfg.num_threads)
            if cutoff:  # what the stage is for: keeping the positives at its cut-off, against the input order
                metrics[f"recall@{cutoff}"] = float(np.nanmean(group_recall(pred, valid.y, valid.group, cutoff)))
                metrics[f"recall@{cutoff}_input_order"] = float(np.nanmean(group_recall(
                    -valid.position.astype(np.float64), valid.y, valid.group, cutoff)))
            metrics[f"ndcg@{k}"] = float(group_ndcg(pred, valid.y, valid.group, self.label_gain, k).mean())
            metrics[f"ndcg@{k}_input_order"] = float(
                group_ndcg(-valid.position.astype(np.float64), valid.y, valid.group, self.label_gain, k).mean())
            if "ann_score" in valid.names:
                ann = np.nan_to_num(valid.X[:, valid.names.index("ann_score")].astype(np.float64), nan=-np.inf)
                metrics[f"ndcg@{k}_ann_score"] = float(group_ndcg(ann, valid.y, valid.group, self.label_gain, k).mean())
        self.valid_metrics = metrics
        logger.info("pre-ranker: %s", {m: v for m, v in metrics.items() if m != "label_gain"})
        return self

    def _check_fitted(self) -> None:
        if self.booster is None or self.ctx is None:
            raise RuntimeError("PrerankStage: call fit() or load() first")

    def score(self, requests: Requests, candidates: Candidates) -> dict[str, np.ndarray]:
        """{"score": (B, C) float64}: the model's score of each candidate, -inf at padding."""
        self._check_fitted()
        items = np.asarray(candidates.items)
        out = np.full(items.shape, -np.inf, dtype=np.float64)
        valid = (items >= 0) & (items < self.ctx.n_items)
        if not valid.any():
            return {"score": out}
        x = assemble(requests, candidates, self.ctx, self.feature_names)
        checkpoint()  # under a serving deadline: stop here once the stage's budget has passed
        out[valid] = self.booster.predict(x[valid], num_threads=self.cfg.num_threads)
        return {"score": out}

    # ---------------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / "model.txt"))
        write_json(folder / "features.json", {"names": self.feature_names})
        write_json(folder / "prerank.json", {
            "format_version": FORMAT_VERSION, "config": to_dict(self.cfg), "label_gain": self.label_gain,
            "valid_metrics": self.valid_metrics,
        })
        self.ctx.save(folder / "features")

    @classmethod
    def load(cls, folder: str | Path, catalog: Catalog) -> "PrerankStage":
        """Rebuild a saved stage for ``catalog``; refuses a model whose feature names do not match."""
        import lightgbm as lgb

        folder = Path(folder)
        meta_path = folder / "prerank.json"
        meta = read_stage_meta(meta_path, "pre-ranker", FORMAT_VERSION)
        names = json.loads((folder / "features.json").read_text(encoding="utf-8"))["names"]
        model_path = folder / "model.txt"
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: not found")
        booster = lgb.Booster(model_file=str(model_path))
        model_names = list(booster.feature_name())
        if model_names != list(names):
            raise ValueError(f"{model_path}: the model's features do not match {folder / 'features.json'}: "
                             f"{_name_mismatch(model_names, list(names))}")
        ctx = FeatureContext.load(folder / "features", catalog)
        try:
            resolve(names, ctx)
        except ValueError as exc:
            raise ValueError(f"{model_path}: the model was trained on features the registry does not provide "
                             f"({exc})") from None
        self = cls()
        self.cfg = from_dict(PrerankConfig, meta["config"], prefix=f"{meta_path}: config")
        self.ctx, self.booster, self.feature_names = ctx, booster, list(names)
        self.label_gain = [float(v) for v in meta.get("label_gain", [])]
        self.valid_metrics = meta.get("valid_metrics", {})
        return self


def _name_mismatch(model: list[str], saved: list[str]) -> str:
    parts = []
    missing = [n for n in saved if n not in model]
    extra = [n for n in model if n not in saved]
    if missing:
        parts.append(f"missing from the model: {missing}")
    if extra:
        parts.append(f"in the model but not saved: {extra}")
    if not parts:
        j = next(i for i, (a, b) in enumerate(zip(model, saved)) if a != b)
        parts.append(f"order differs at column {j}: model has {model[j]!r}, saved list has {saved[j]!r}")
    return "; ".join(parts) + f" (model: {model}; saved: {saved})"


__all__ = ["PrerankConfig", "PrerankStage", "RankingData", "build_ranking_data", "group_ndcg", "group_recall",
           "lgb_params", "split_groups", "train_booster"]
