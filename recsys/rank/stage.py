"""The heavy ranker: a multi-task network (MMoE by default) over the pre-ranker's candidates, trained with
negative downsampling, recalibrated, and combined into one score by the value model.

Shapes: B requests, C candidates per request, F assembled features, R rows ((request, candidate) pairs),
T tasks, G requests of a window (one per user), L history length, D embedding dim.

**Rows** (:func:`build_rank_rows`), on the heavy ranker's window (one the pre-ranker did not train on; see
:func:`recsys.training.stage_windows`), with the same protocol as the pre-ranker's training data
(:func:`recsys.prerank.stage.build_ranking_data`):

* one request per user of the window (every user with a row there: on impression logs users who never
  clicked are part of the distribution), at the time of the user's first event in the window, with that
  event's context, and the history of the user's engagements before the window (``past_df``; seen items
  excluded, as when serving);
* the (user, item) examples, chosen by ``examples`` (:class:`Examples`):

  - ``impressions`` (what ``auto`` picks on a dataset with impressions): every item shown to the user in the
    window, with its logged labels: the realistic positives and negatives;
  - ``funnel`` (what ``auto`` picks otherwise): ``upstream.candidates(requests)``, exactly the candidates
    the bundle's engine hands the stage (retrieval at the funnel's ``retrieve_k``, pre-ranked and cut to the
    pre-ranker's cut-off; sizes from ``engine.funnel``), labelled 1 if the user engaged with them in the window;
  - ``both``: the funnel candidates plus the impressions not among them (source ``impression``).

  Why ``impressions`` on impression logs: a funnel candidate the log never showed gets label 0 although
  nobody knows whether the user would have clicked it, so with ``both`` the model learns the logging policy's
  exposure (shown or not) more than the click. Measured on the synthetic ``demo`` world (400k impressions,
  test-window impressions): click AUC 0.719 / NE 0.92 / calibration 0.93 with ``impressions`` against
  0.576 / 1.10 / 0.48 with ``both`` (the pre-ranker's order: AUC 0.598). Items the user engaged with before
  the window are left out (the engine excludes them);
* labels per task: ``max`` over the window's rows of the (user, item) pair of ``label > 0``; 0 for a
  candidate the user did not engage with;
* truth (synthetic worlds): for a task ``t`` with a truth column ``p_<t>``, the probability of the pair's
  label, ``1 - prod_k (1 - p_k)`` over the pair's impressions in the window (exact for the max label of
  independent impressions); NaN for rows that were not shown.

**Inputs** (:class:`InputEncoder`): the dense features are the NUMERIC features of
:func:`recsys.features.assemble` (the same function the pre-ranker, the evaluator and the HTTP service call, so
training and serving cannot compute a feature differently), standardised with the training rows' mean and
standard deviation, ``z = clip((x - mean) / std, -5, 5)`` (with ``rank.dense_log``, the default, of
``x = sign(v) log(1 + |v|)`` for a feature value ``v``); a missing value (NaN) becomes 0 (the mean) and,
for each feature that had missing values in training, a 0/1 missing-indicator column is appended. The
features default to every available feature except those describing the candidate's *source*
(:data:`SOURCE_DEPENDENT`): the impressions appended to the training rows have source ``impression``, which
never occurs when serving, so those columns would let the model tell an impression from a candidate (a
train/serve skew). Embedded (categorical) fields: with ``user_id`` the user, by external id (unknown users and
users without a training row: the OOV row, trained by ``user_dropout``; off by default: on the synthetic world
a per-user embedding learnt from one short window overfits: test-window click AUC 0.61-0.63 with it against
0.65 without, ``tiny`` preset with 100k impressions), every CATEGORICAL feature and every ``ctx.`` / ``user.``
/ ``item.`` feature whose dataset column is categorical (e.g. the hour and the device of the request, the item
category, the user's age bucket), coded by the sorted levels seen in the training rows (unseen level or NaN:
one OOV row), and the candidate item
(table shared with the history). History: the user's last ``history_len`` engaged items, pooled against
the candidate by target attention (:class:`~recsys.rank.mmoe.TargetAttentionPooling`, DIN). All embedding
tables start at ``N(0, 0.01^2)``, so rows that never get a gradient (users held out for validation, items
absent from training) stay near the origin, an "average" entity, instead of random.

**Tasks.** Default: every binary label of the dataset in schema order (``click, like`` on the synthetic
world). A task whose label is constant in the training rows is skipped with a warning (it carries no
signal and its logloss would push the head to +-infinity); a task named in the config that is not a
binary label raises ValueError listing the binary labels. With ``esmm``, a task whose positive rows are all
positive for another task (e.g. ``like`` only where ``click``) gets the one with the fewest positives as its
ESMM parent (Ma et al., SIGIR 2018): its head models ``P(child | parent)`` and its probability is
``P(parent) * P(child | parent)``, trained on the entire space (:func:`recsys.rank.mmoe.multitask_loss`).

**Exposure head** (``exposure: true``, datasets with impressions). Test-window engagements can only happen on
items the logging policy showed, so the probability that a candidate is engaged *in the log* is
``P(shown | candidate) * P(engaged | shown)``; a ranker of ``P(click | shown)`` alone ranks by the value of
showing an item and loses on logged metrics to rankers that also learn the exposure (measured on the ``demo``
world: logged ndcg@10 0.073 against 0.121 for the pre-ranker, whose labels mix both). With the exposure head
the rows are ``both``; the tasks (and ``P(any)``) are trained on the shown rows only (per-row loss weights),
so they stay conditional on being shown and are calibrated on impressions; one more head ``exposure`` learns
``P(shown)`` on the funnel candidates (the distribution the engine scores; the appended impressions lie
outside it). ``score`` then also returns ``p_exposure``, and the value model multiplies the value by
``p_exposure ** value.exposure_power`` (:mod:`recsys.rank.value`): 1 ranks by expected logged engagement, 0 by
the value of showing (the ``no_exposure`` system of the report).

**Negative downsampling and recalibration.** Rows whose labels are *all* 0 are kept with probability
``w = downsample_w`` (seeded; validation rows as well, so early stopping monitors the distribution being
fitted); every row with a positive is kept (He et al., ADKDD 2014, section 6.3). Let ``K(x)`` be the
probability that a row is kept, ``K = P(any) + w (1 - P(any))``, with ``P(any)`` the probability that some
task is positive. Every task ``t`` has all its positive rows kept, so on the sampled distribution
``P_s(t | x) = P(t | x) / K(x)``, and with ``r = P_s(any | x)``, ``K = 1 / (r + (1 - r) / w)``. Hence the
recalibration applied in :meth:`RankStage.score`::

    q_t = p_t / (r + (1 - r) / w)

For the task that is positive exactly when any task is (the *cover* task: ``click`` when ``like`` implies
``click``), ``r = p_t`` and this is He et al.'s ``q = p / (p + (1 - p) / w)``. An ESMM child of the cover task
becomes ``q_child = q_parent * P(child | parent)``: the conditional is *not* recalibrated, because no row
with ``parent = 1`` is ever dropped, so the conditional distribution is the same with and without sampling.
With the exposure head, the unshown funnel candidates are all-negative rows too and are kept at rate ``w``;
a kept shown row without engagement counts ``1 / w`` in the exposure head's loss, so that for that head only
unshown rows are thinned and ``q_exposure = p / (p + (1 - p) / w)``.
When no task is a cover task (e.g. two independent labels), an auxiliary head ``P_s(any)`` is trained for
``r`` (only when ``w < 1``; it is not exposed). The recalibrated ``q`` are the ``p_<task>`` outputs and
the inputs of the value model (:mod:`recsys.rank.value`).

**Training**: :func:`recsys.rank.trainer.fit_multitask` (Adam, early stopping on the mean validation logloss
of a seeded user-level holdout of ``valid_fraction`` of the window's users; with ``valid_fraction = 0``,
or a single user, the training rows serve as validation set and training runs to ``max_epochs`` unless the
training logloss stops improving). Initial weights are seeded with ``seed``, and each head's bias starts at
the logit of its training base rate (:func:`init_head_biases`); everything is deterministic for the config.
With ``calibrate_intercepts`` each head's logit is then shifted once so that its served probability ``q``
matches its label rate on all the held-out users' rows (:func:`level_offsets`).

**Scoring**: ``score(requests, cands) -> {"score": value (B, C), "p_<task>": q (B, C) per task}``, float64,
``-inf`` / NaN at padding. The features come from :func:`recsys.features.assemble` (row-wise), and the
network runs in float64 with the head probabilities rounded to float32, so a user's scores are the same alone
or in a batch (in float32, BLAS kernels chosen by batch size change ~1 output in 1000 in the last bit).

**Saved folder** (no pickle)::

    rank.json           format version, RankConfig, tasks, ESMM parents, w, inputs (feature names, embedded
                        fields with their levels, dense columns), sizes, validation metrics
    model.safetensors   the network's state dict (safetensors.torch.save_file)
    dense_mean.npy, dense_std.npy   standardisation of the dense features
    user_vocab.parquet  with user_id: the external ids of the embedded users
    features/           the FeatureContext (see recsys.features)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from recsys.probability import auc, downsample_negatives, logloss
from recsys.configlib import ConfigError, from_dict, to_dict
from recsys.data.catalog import Catalog, positives
from recsys.data.schema import Dataset, Kind, Role
from recsys.data.vocab import Vocab
from recsys.deadline import checkpoint
from recsys.retrieval.sources import select_columns
from recsys.features import (SOURCES, STAGE_SCORE_FEATURES, FeatureConfig, FeatureContext, FeatureKind, assemble,
                             available_features, resolve)
from recsys.graph import GraphConfig
from recsys.io import read_stage_meta, write_json
from recsys.stages.base import FitContext
from recsys.prerank.stage import _append_extras, split_groups
from recsys.rank.mmoe import ARCHITECTURES, RankerNet, TargetAttentionPooling, build_multitask, ranker_input_dim
from recsys.rank.trainer import FitHistory, TrainConfig, fit_multitask, predict, predict_logits
from recsys.rank.config import ANY_TASK, ARCHITECTURE_NAMES, Examples, RankConfig, TrainConfig  # noqa: F401
from recsys.rank.value import EXPOSURE, ValueConfig, value
from recsys.retrieval.sources import Candidates
from recsys.types import Ragged, Requests

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
#: features describing where a candidate came from; left out by default (see the module docstring)
SOURCE_DEPENDENT = ("ann_rank", *(f"src_{s}" for s in SOURCES), "n_sources")
EMB_INIT_STD = 0.01
_CHUNK = 512  # requests per retrieve + pre-rank + assemble block
_PREDICT_BATCH = 8192


def binary_labels(ds: Dataset) -> list[str]:
    """The dataset's binary label columns, in schema order."""
    cols = ds.schema.tables["interactions"].columns
    return [c for c in ds.schema.labels if cols[c].kind is Kind.BINARY]


def resolve_tasks(ds: Dataset, tasks: Sequence[str]) -> list[str]:
    """``tasks`` checked against the dataset's binary labels (default: all of them)."""
    available = binary_labels(ds)
    if not tasks:
        if not available:
            raise ValueError(f"rank.tasks: dataset {ds.schema.name!r} has no binary label column; labels: "
                             f"{ds.schema.labels}")
        return available
    bad = [t for t in tasks if t not in available]
    if bad:
        raise ValueError(f"rank.tasks: {bad} are not binary label columns of {ds.schema.name!r}; available "
                         f"labels: {available}")
    return list(tasks)


def detect_esmm_parents(df: pd.DataFrame, tasks: Sequence[str]) -> list[int | None]:
    """Per task, the index of its ESMM parent or None, from the rows of ``df``: task ``j``'s parent is the task
    ``i`` with the fewest positives among those with strictly more positives than ``j`` and positive on every
    row where ``j`` is (``like`` only where ``click``). Strictly more positives keeps the relation acyclic;
    two identical labels get no parent."""
    pos = [df[t].to_numpy() > 0 for t in tasks]
    count = [int(p.sum()) for p in pos]
    parents: list[int | None] = []
    for j in range(len(tasks)):
        cands = [i for i in range(len(tasks))
                 if i != j and count[j] > 0 and count[i] > count[j] and not (pos[j] & ~pos[i]).any()]
        parents.append(min(cands, key=lambda i: (count[i], i)) if cands else None)
    return parents


# ------------------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RankRows:
    """The (request, candidate) rows of a window (see the module docstring).

    requests  G requests, one per user (``user_ids`` (G,) external ids)
    blocks    [(first request row, Candidates of the block)]: the candidates each block was assembled from
    req       (R,) request row of each example; ``col`` (R,) its column in its block's candidates
    item      (R,) catalogue item index
    X         (R, F) float32 assembled features ``names`` (NaN = missing)
    labels    (R, T) int8 0/1 per task of ``tasks``
    shown     (R,) bool the pair was shown in the window (an impression; always False without impressions)
    funnel    (R,) bool the row is a pre-ranked candidate (False: an appended impression)
    truth     (R, T) float64 probability of the label from the truth columns (NaN where unknown), or None
    """

    requests: Requests
    user_ids: np.ndarray
    blocks: list[tuple[int, Candidates]]
    req: np.ndarray
    col: np.ndarray
    item: np.ndarray
    X: np.ndarray
    labels: np.ndarray
    shown: np.ndarray
    funnel: np.ndarray
    truth: np.ndarray | None
    names: list[str]
    tasks: list[str]

    def __len__(self) -> int:
        return len(self.req)

    @staticmethod
    def concat(parts: list["RankRows"]) -> "RankRows":
        """The rows of ``parts`` one after another (e.g. several cut points: each part's requests, blocks and
        request rows offset by the requests before it). The parts' ``requests.users`` index their own
        catalogues; rows are identified by ``user_ids`` (external)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        if any(p.names != first.names or p.tasks != first.tasks for p in parts):
            raise ValueError("RankRows.concat: parts differ in features or tasks")
        starts = np.cumsum([0] + [len(p.requests) for p in parts[:-1]])
        cat = lambda f: np.concatenate([getattr(p, f) for p in parts])  # noqa: E731
        truth = None if any(p.truth is None for p in parts) else cat("truth")
        return RankRows(Requests.concat([p.requests for p in parts]), cat("user_ids"),
                        [(int(s0 + b), c) for s0, p in zip(starts, parts) for b, c in p.blocks],
                        np.concatenate([p.req + s0 for s0, p in zip(starts, parts)]), cat("col"), cat("item"),
                        cat("X"), cat("labels"), cat("shown"), cat("funnel"), truth, list(first.names),
                        list(first.tasks))

    def stage_scores(self, stage) -> np.ndarray:
        """(R,) float64 ``stage.score(requests, candidates)["score"]`` at each row (any ScoringStage)."""
        out = np.empty(len(self.req), dtype=np.float64)
        for start, cands in self.blocks:
            rows = np.arange(start, start + len(cands))
            s = np.asarray(stage.score(self.requests.take(rows), cands)["score"], dtype=np.float64)
            sel = (self.req >= start) & (self.req < start + len(cands))
            out[sel] = s[self.req[sel] - start, self.col[sel]]
        return out

    def source_scores(self, name: str) -> np.ndarray:
        """(R,) float64 the candidate source score ``Candidates.scores[name]`` at each row (NaN if absent)."""
        out = np.full(len(self.req), np.nan, dtype=np.float64)
        for start, cands in self.blocks:
            if name not in cands.scores:
                continue
            sel = (self.req >= start) & (self.req < start + len(cands))
            out[sel] = np.asarray(cands.scores[name], dtype=np.float64)[self.req[sel] - start, self.col[sel]]
        return out


def _first_events(win: pd.DataFrame, ucol: str, max_users: int, seed: int) -> pd.DataFrame:
    first = win.drop_duplicates(ucol, keep="first")
    if max_users and len(first) > max_users:
        pick = np.sort(np.random.default_rng(seed).choice(len(first), max_users, replace=False))
        first = first.iloc[pick]
    return first


def _pair_table(win: pd.DataFrame, requests: Requests, uindex: pd.Index, catalog: Catalog, ds: Dataset,
                tasks: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Sorted unique pair keys ``row * (N + 1) + item`` of the window's rows (items engaged before the window
    left out), with per pair the max label per task (P, T) and the truth probability (P, T) or None."""
    n = catalog.n_items
    r = uindex.get_indexer(win[catalog.user_col].to_numpy())
    i = catalog.items.encode(win[catalog.item_col].to_numpy())
    ok = (r >= 0) & (i < n)
    keys = r[ok].astype(np.int64) * (n + 1) + i[ok]
    hist = requests.history
    hkeys = np.repeat(np.arange(len(hist), dtype=np.int64), hist.lengths()) * (n + 1) + hist.values
    fresh = ~np.isin(keys, hkeys)
    ok_idx = np.flatnonzero(ok)[fresh]
    keys = keys[fresh]
    frame = {"key": keys}
    for j, t in enumerate(tasks):
        frame[f"y{j}"] = (win[t].to_numpy()[ok_idx] > 0).astype(np.int8)
    cols = ds.schema.tables["interactions"].columns
    truth_cols = {j: f"p_{t}" for j, t in enumerate(tasks)
                  if f"p_{t}" in win.columns and f"p_{t}" in cols and cols[f"p_{t}"].role is Role.TRUTH}
    for j, c in truth_cols.items():
        p = np.clip(win[c].to_numpy(dtype=np.float64)[ok_idx], 0.0, 1.0)
        frame[f"l{j}"] = np.log1p(-np.minimum(p, 1.0 - 1e-12))  # log(1 - p); sum over the pair's impressions
    g = pd.DataFrame(frame).groupby("key", sort=True)
    agg = g.agg({**{f"y{j}": "max" for j in range(len(tasks))}, **{f"l{j}": "sum" for j in truth_cols}})
    pkeys = agg.index.to_numpy(np.int64)
    plab = np.stack([agg[f"y{j}"].to_numpy(np.int8) for j in range(len(tasks))], axis=1) if tasks else \
        np.zeros((len(pkeys), 0), np.int8)
    ptruth = None
    if truth_cols:
        ptruth = np.full((len(pkeys), len(tasks)), np.nan)
        for j in truth_cols:
            ptruth[:, j] = -np.expm1(agg[f"l{j}"].to_numpy(np.float64))  # 1 - prod(1 - p)
    return pkeys, plab, ptruth


def _lookup_index(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Position of each ``query`` key in the sorted unique ``keys`` (-1 where absent)."""
    out = np.full(query.shape, -1, dtype=np.int64)
    if len(keys) == 0:
        return out
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    hit = keys[pos] == query
    out[hit] = pos[hit]
    return out


def _funnel(upstream, req: Requests, funnel: bool) -> Candidates:
    """The candidates the upstream engine hands the stage (``upstream.candidates``); ``funnel`` False: none
    (an empty block that still names the sources)."""
    if funnel:
        return upstream.candidates(req)
    cands = upstream.retrieval.retrieve(upstream.encode(req), 1)
    return select_columns(cands, np.zeros((len(req), 0), dtype=np.int64))


def _upstream_scores(upstream, req: Requests, cands: Candidates, n_funnel: int) -> Candidates:
    """``cands`` with the upstream scoring stages' scores of the columns past ``n_funnel`` (appended
    impressions) filled in; the funnel columns keep the scores they were selected by."""
    scores = dict(cands.scores)
    for stage, _ in upstream.stages:
        full = np.asarray(stage.score(req, dataclasses.replace(cands, scores=scores))["score"], dtype=np.float64)
        pre = scores.get(stage.name)
        if pre is not None and n_funnel:
            full[:, :n_funnel] = pre[:, :n_funnel]
        scores[stage.name] = full
    return dataclasses.replace(cands, scores=scores)


def build_rank_rows(
    ds: Dataset,
    catalog: Catalog,
    upstream,
    ctx: FeatureContext,
    window_df: pd.DataFrame,
    past_df: pd.DataFrame,
    cfg: RankConfig,
    tasks: Sequence[str],
    names: Sequence[str],
    max_users: int | None = None,
) -> RankRows:
    """The rows of ``window_df`` (see the module docstring) with features ``names`` and labels ``tasks``.

    ``upstream``: the :class:`recsys.engine.Engine` that serves the stage (its ``candidates(requests)`` are the
    funnel rows); ``past_df`` the interactions before the window (histories). ``max_users`` overrides
    ``cfg.max_train_users`` (0: every user).
    """
    ucol, icol, tcol = catalog.user_col, catalog.item_col, catalog.time_col
    label = ds.schema.positive_label
    tasks, names = list(tasks), list(names)
    for what, df, need in (("window_df", window_df, [ucol, icol, tcol, *tasks]),
                           ("past_df", past_df, [ucol, icol, tcol, label])):
        missing = [c for c in dict.fromkeys(need) if c not in df.columns]
        if missing:
            raise ValueError(f"build_rank_rows: {what} lacks column(s) {missing}; columns: {list(df.columns)}")
    mode = cfg.examples.resolve(bool(ds.schema.has_impressions))
    impressions = mode in (Examples.IMPRESSIONS, Examples.BOTH)
    use_funnel = mode in (Examples.FUNNEL, Examples.BOTH)
    n = catalog.n_items
    win = window_df.iloc[np.argsort(window_df[tcol].to_numpy(), kind="stable")]
    first = _first_events(win, ucol, cfg.max_train_users if max_users is None else max_users, cfg.seed)
    user_ids = first[ucol].to_numpy()
    if len(user_ids) == 0:
        raise ValueError("build_rank_rows: the window has no rows")
    context = {c: first[c].to_numpy() for c in ds.schema.context_columns if c in first.columns}
    requests = catalog.requests(user_ids, first[tcol].to_numpy(np.int64), positives(past_df, label),
                                exclude_seen=True, context=context)
    uindex = pd.Index(user_ids)
    pkeys, plab, ptruth = _pair_table(win, requests, uindex, catalog, ds, tasks)

    blocks, reqs, cols, items, Xs, funnel = [], [], [], [], [], []
    for start in range(0, len(requests), _CHUNK):
        rows = np.arange(start, min(start + _CHUNK, len(requests)))
        req = requests.take(rows)
        cands = _funnel(upstream, req, use_funnel)
        n_funnel = cands.items.shape[1]
        if impressions:
            sel = (pkeys >= rows[0] * (n + 1)) & (pkeys < (rows[-1] + 1) * (n + 1))
            er, ei = pkeys[sel] // (n + 1) - rows[0], pkeys[sel] % (n + 1)
            in_cands = np.isin(er * (n + 1) + ei, (np.arange(len(rows))[:, None] * (n + 1) + cands.items).ravel())
            er, ei = er[~in_cands], ei[~in_cands]
            cnt = np.bincount(er, minlength=len(rows))
            cands = _append_extras(cands, Ragged(np.r_[0, np.cumsum(cnt)], ei), req, upstream.retrieval)
            if upstream.stages and cands.items.shape[1] > n_funnel:
                cands = _upstream_scores(upstream, req, cands, n_funnel)
        feats = assemble(req, cands, ctx, names)  # (b, C, F)
        valid = (cands.items >= 0) & (cands.items < n)
        b_idx, c_idx = np.nonzero(valid)
        blocks.append((int(start), cands))
        reqs.append(rows[b_idx])
        cols.append(c_idx)
        items.append(cands.items[b_idx, c_idx])
        Xs.append(feats[b_idx, c_idx])
        funnel.append(c_idx < n_funnel)
    req_all = np.concatenate(reqs).astype(np.int64)
    item_all = np.concatenate(items).astype(np.int64)
    idx = _lookup_index(pkeys, req_all * (n + 1) + item_all)
    hit = idx >= 0
    labels = np.zeros((len(req_all), len(tasks)), dtype=np.int8)
    labels[hit] = plab[idx[hit]]
    shown = hit & bool(ds.schema.has_impressions)
    truth = None
    if ptruth is not None:  # the truth of a logged impression (an engagement-only log has no impressions)
        truth = np.full((len(req_all), len(tasks)), np.nan)
        truth[shown] = ptruth[idx[shown]]
    out = RankRows(requests, user_ids, blocks, req_all, np.concatenate(cols).astype(np.int64), item_all,
                   np.concatenate(Xs).astype(np.float32, copy=False), labels, shown, np.concatenate(funnel), truth,
                   names, tasks)
    logger.info("heavy-ranker rows: %d users, %d rows (%d funnel candidates, %d shown in the window), "
                "positives per task %s", len(user_ids), len(out), int(out.funnel.sum()), int(out.shown.sum()),
                dict(zip(tasks, labels.sum(axis=0).tolist())))
    return out


# ------------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------------


def default_features(ctx: FeatureContext, prerank: bool = True) -> list[str]:
    """Every feature :func:`recsys.features.assemble` offers with ``ctx`` except :data:`SOURCE_DEPENDENT`, and
    except the upstream stages' scores (:data:`recsys.features.STAGE_SCORE_FEATURES`) without a pre-ranker."""
    return [f for f in available_features(ctx)
            if f not in SOURCE_DEPENDENT and (prerank or f not in STAGE_SCORE_FEATURES)]


def embedded_features(names: Sequence[str], ctx: FeatureContext, ds: Dataset) -> list[str]:
    """The features fed through an embedding: CATEGORICAL ones, and ``ctx.`` / ``user.`` / ``item.`` features
    whose dataset column is categorical although numerically coded (e.g. the hour of day)."""
    kinds = {f.name: f.kind for f in resolve(names, ctx)}
    sch = ds.schema

    def schema_categorical(name: str) -> bool:
        fam, _, column = name.partition(".")
        table = {"ctx": "interactions", "user": "users", "item": "items"}.get(fam)
        if table is None or table not in sch.tables or column not in sch.tables[table].columns:
            return False
        spec = sch.tables[table].columns[column]
        return spec.kind is Kind.CATEGORICAL or spec.role is Role.CATEGORICAL

    return [n for n in names if kinds[n] is FeatureKind.CATEGORICAL or schema_categorical(n)]


def request_user_ids(requests: Requests, catalog: Catalog) -> np.ndarray:
    """(B,) external user ids of the requests: ``requests.user_ids``, else the catalogue's id of each known user
    index (None for unknown users)."""
    if requests.user_ids is not None:
        return np.asarray(requests.user_ids)
    users = np.asarray(requests.users, dtype=np.int64)
    out = np.full(len(users), None, dtype=object)
    known = (users >= 0) & (users < catalog.n_users)
    out[known] = catalog.users.ids[users[known]]
    return out


def _field_key(name: str) -> str:
    return "f_" + name.replace(".", "__")  # nn.ModuleDict keys cannot contain "."


@dataclasses.dataclass
class InputEncoder:
    """Assembled features (R, F) -> RankerNet inputs (see the module docstring).

    names     the assembled feature names (``assemble`` column order)
    embedded  names of the embedded features, in field order; ``levels`` their sorted float64 levels
    dense     names of the dense features, in column order; ``mean`` / ``std`` (F_d,) float64 of their
              (with ``log``: signed-log, ``sign(x) log1p(|x|)``) values
    missing   dense features with a missing-indicator column (appended after the dense columns, in order)
    users     with ``RankConfig.user_id``: Vocab of the external ids of the users with a training row (the
              first categorical field; every other user, known to the catalogue or not, uses its OOV row);
              None: no user field. External ids, so a serving catalogue with more users maps the same way.
    """

    names: list[str]
    embedded: list[str]
    levels: list[np.ndarray]
    dense: list[str]
    mean: np.ndarray
    std: np.ndarray
    missing: list[str]
    n_items: int
    history_len: int
    users: Vocab | None
    log: bool = False

    def _dense(self, X: np.ndarray) -> np.ndarray:
        """(R, F) assembled rows -> (R, F_d) float64 dense columns, signed-log with ``log`` (NaN stays NaN)."""
        col = {n: j for j, n in enumerate(self.names)}
        D = X[:, [col[n] for n in self.dense]].astype(np.float64) if self.dense else np.zeros((len(X), 0))
        return np.sign(D) * np.log1p(np.abs(D)) if self.log else D

    @classmethod
    def fit(cls, X: np.ndarray, user_ids: np.ndarray, names: Sequence[str], embedded: Sequence[str], n_items: int,
            history_len: int, use_user: bool, log: bool = False) -> "InputEncoder":
        """Levels, standardisation and (with ``use_user``) the user vocabulary from the training rows ``X``
        (R, F) of external ``user_ids`` (R,); ``log``: signed-log the dense features first."""
        names = list(names)
        col = {n: j for j, n in enumerate(names)}
        levels = []
        for name in embedded:
            v = X[:, col[name]].astype(np.float64)
            levels.append(np.unique(v[np.isfinite(v)]))
        dense = [n for n in names if n not in set(embedded)]
        D = cls(names, [], [], dense, np.zeros(0), np.zeros(0), [], 0, 0, None, log)._dense(X)
        finite = np.isfinite(D)
        cnt = finite.sum(axis=0)
        mean = np.where(cnt > 0, np.where(finite, D, 0.0).sum(axis=0) / np.maximum(cnt, 1), 0.0)
        var = np.where(finite, (D - mean) ** 2, 0.0).sum(axis=0) / np.maximum(cnt, 1)
        std = np.sqrt(var)
        std = np.where(std > 0, std, 1.0)
        missing = [n for j, n in enumerate(dense) if not finite[:, j].all()]
        users = Vocab(pd.unique(pd.Series(np.asarray(user_ids)).dropna())) if use_user else None
        return cls(names, list(embedded), levels, dense, mean, std, missing, int(n_items), int(history_len), users,
                   bool(log))

    @property
    def cards(self) -> list[int]:
        """Embedding rows per categorical field (the user, then the embedded features), OOV row included."""
        return ([self.users.size] if self.users is not None else []) + [len(lv) + 1 for lv in self.levels]

    @property
    def n_dense(self) -> int:
        return len(self.dense) + len(self.missing)

    def field_names(self) -> list[str]:
        return (["user"] if self.users is not None else []) + [_field_key(n) for n in self.embedded]

    def transform(self, X: np.ndarray, user_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(cat (R, U + E) int64, dense (R, F_d + M) float32) of rows ``X`` (R, F) of external ``user_ids`` (R,)
        (None or None entries: unknown users); U = 1 with a user vocabulary (column 0), else 0."""
        col = {n: j for j, n in enumerate(self.names)}
        R = len(X)
        u0 = int(self.users is not None)
        cat = np.empty((R, u0 + len(self.embedded)), dtype=np.int64)
        if self.users is not None:
            cat[:, 0] = self.users.oov if user_ids is None else self.users.encode(np.asarray(user_ids))
        for f, (name, lv) in enumerate(zip(self.embedded, self.levels)):
            v = X[:, col[name]].astype(np.float64)
            pos = np.minimum(np.searchsorted(lv, v), max(len(lv) - 1, 0))
            hit = (lv[pos] == v) if len(lv) else np.zeros(R, bool)
            cat[:, u0 + f] = np.where(hit, pos, len(lv))
        D = self._dense(X)
        nan = np.isnan(D)
        z = np.clip((D - self.mean) / self.std, -5.0, 5.0)
        z[nan] = 0.0
        ind = [nan[:, self.dense.index(n)] for n in self.missing]
        dense = np.concatenate([z, np.stack(ind, axis=1)], axis=1) if ind else z
        return cat, dense.astype(np.float32)

    def history(self, requests: Requests) -> np.ndarray:
        """(B, max(L, 1)) int64 each request's last L engaged catalogue items, right-aligned, padded with N."""
        b, L, n = len(requests), max(self.history_len, 1), self.n_items
        h = requests.history
        ok = (h.values >= 0) & (h.values < n)
        rows = np.repeat(np.arange(b, dtype=np.int64), h.lengths())[ok]
        known = Ragged(np.r_[0, np.cumsum(np.bincount(rows, minlength=b))], h.values[ok]).last(L)
        out = np.full((b, L), n, dtype=np.int64)
        lens = known.lengths()
        r = np.repeat(np.arange(b), lens)
        c = L - np.repeat(lens, lens) + (np.arange(len(known.values)) - np.repeat(known.indptr[:-1], lens))
        out[r, c] = known.values
        return out

    def to_json(self) -> dict:
        return {"names": self.names, "embedded": self.embedded, "levels": [lv.tolist() for lv in self.levels],
                "dense": self.dense, "missing": self.missing, "n_items": self.n_items,
                "history_len": self.history_len, "user_field": self.users is not None, "log": self.log}

    @classmethod
    def from_json(cls, d: dict, mean: np.ndarray, std: np.ndarray, users: Vocab | None) -> "InputEncoder":
        return cls(list(d["names"]), list(d["embedded"]), [np.asarray(lv, np.float64) for lv in d["levels"]],
                   list(d["dense"]), mean, std, list(d["missing"]), int(d["n_items"]), int(d["history_len"]), users,
                   bool(d.get("log", False)))  # bundles written before the transform existed: no log


def build_net(cfg: RankConfig, enc: InputEncoder, n_tasks: int) -> RankerNet:
    """The RankerNet for ``enc``'s inputs, with ``n_tasks`` heads (embeddings ``N(0, EMB_INIT_STD^2)``)."""
    emb: dict[str, nn.Embedding] = {}
    for key, card in zip(enc.field_names(), enc.cards):
        emb[key] = nn.Embedding(card, cfg.emb_dim)
    emb["item"] = nn.Embedding(enc.n_items + 1, cfg.emb_dim)
    for e in emb.values():
        nn.init.normal_(e.weight, std=EMB_INIT_STD)
    pool = TargetAttentionPooling(cfg.emb_dim, "din") if cfg.history_len > 0 else None
    in_dim = ranker_input_dim(emb, enc.n_dense, pool is not None)
    core = build_multitask(cfg.arch, in_dim, n_tasks, cfg.n_experts, cfg.expert_dims, cfg.tower_dims, cfg.dropout)
    return RankerNet(emb, enc.n_dense, pool, core)


def task_heads(core: nn.Module) -> list[nn.Linear]:
    """The last ``nn.Linear`` (the logit layer) of each task's tower in a multi-task core of
    :func:`recsys.rank.mmoe.build_multitask`."""
    towers = getattr(core, "towers", None) or getattr(core, "models", None)
    if towers is None:
        raise TypeError(f"task_heads: {type(core).__name__} has neither towers nor models")
    heads = []
    for tower in towers:
        linears = [m for m in tower.modules() if isinstance(m, nn.Linear)]
        assert linears and linears[-1].out_features == 1, "a task tower ends in a Linear(., 1)"
        heads.append(linears[-1])
    return heads


def init_head_biases(net: RankerNet, Y: np.ndarray, parents: Sequence[int | None],
                     weights: np.ndarray | None = None) -> np.ndarray:
    """Start each head's logit bias at the training base rate of what it models: ``logit(mean y_t)`` for a
    root task, ``logit(sum y_t / sum y_parent)`` for an ESMM child (its conditional), clipped to [1e-4, 1 - 1e-4];
    with ``weights (R, T)`` (the loss weights) the sums are weighted by head ``t``'s column.
    Training then starts calibrated on average instead of at 0.5, which matters for rare labels under early
    stopping (the heads' offsets would otherwise still be converging when the mean validation loss stops
    improving). Returns the (T,) rates."""
    Y = np.asarray(Y, dtype=np.float64)
    W = np.ones_like(Y) if weights is None else np.asarray(weights, dtype=np.float64)
    rates = np.empty(Y.shape[1])
    for t, p in enumerate(parents):
        pos = (W[:, t] * Y[:, t]).sum()
        base = (W[:, t] * Y[:, p]).sum() if p is not None else W[:, t].sum()
        rates[t] = np.clip(pos / max(base, 1e-12), 1e-4, 1.0 - 1e-4) if base > 0 else 0.5
    with torch.no_grad():
        for head, r in zip(task_heads(net.core), rates):
            head.bias.fill_(float(np.log(r / (1.0 - r))))
    return rates


class _RowsModel(nn.Module):
    """Training/prediction adapter: rows carry their request index; the (G, L) history table is looked up
    here instead of being copied per row. Only ``net`` holds parameters (the table is not persistent)."""

    def __init__(self, net: RankerNet, hist: np.ndarray | None, n_items: int, oov_user: int = 0,
                 user_dropout: float = 0.0) -> None:
        super().__init__()
        self.net = net
        self.n_items = n_items
        self.oov_user = oov_user
        self.user_dropout = user_dropout
        self.register_buffer("hist", None if hist is None else torch.from_numpy(hist), persistent=False)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor, req: torch.Tensor, item_idx: torch.Tensor,
                return_gates: bool = False):
        if self.training and self.user_dropout > 0:  # torch's global RNG, seeded by fit_multitask
            drop = torch.rand(cat.shape[0]) < self.user_dropout
            cat = cat.clone()
            cat[drop, 0] = self.oov_user
        h = None if self.hist is None else self.hist[req]
        mask = None if h is None else h < self.n_items
        return self.net(cat, dense, h, mask, item_idx, return_gates=return_gates)


def recalibrate_multitask(p: np.ndarray, r: np.ndarray, w: float) -> np.ndarray:
    """Undo negative downsampling of all-negative rows at rate ``w`` (see the module docstring):
    ``q_t = p_t / (r + (1 - r) / w)`` for ``p (R, T)`` entire-space probabilities on the sampled distribution
    and ``r (R,)`` the sampled probability that any task is positive. ``r = p_t`` gives He et al.'s
    ``q = p / (p + (1 - p) / w)`` (ADKDD 2014, section 6.3)."""
    if not 0.0 < w <= 1.0:
        raise ValueError(f"negative sampling rate w must be in (0, 1], got {w!r}")
    p = np.asarray(p, dtype=np.float64)
    if w == 1.0:
        return p.copy()
    r = np.asarray(r, dtype=np.float64)
    return p / (r + (1.0 - r) / w)[:, None]


def level_offsets(
    logits: np.ndarray,
    labels: np.ndarray,
    weight: np.ndarray,
    parents: Sequence[int | None],
    any_index: int | None,
    exposure_index: int | None,
    w: float,
    thinned: np.ndarray,
    bound: float = 4.0,
) -> np.ndarray:
    """Per-head logit offsets ``delta (T,)`` that put each head's *recalibrated* probability at its label rate
    on the full (not downsampled) distribution.

    Rows ``(R,)`` are the rows to calibrate on: all rows of held-out users (``thinned`` all False), or kept
    (downsampled) rows, where ``thinned (R,)`` marks those kept at rate ``w`` (all labels 0). Each (row, head)
    counts ``omega_rt = 1 / w`` where the row was thinned and ``y_rt = 0``,
    else 1 (a positive of the exposure head already carries ``1 / w`` in ``weight``), so that
    ``sum_r weight_rt omega_rt f_r`` estimates the full-distribution sum, and ``delta`` solves, head by head,
    ``sum_r weight_rt omega_rt q_rt(delta) = sum_r weight_rt omega_rt y_rt`` with ``q`` exactly as served
    (:meth:`RankStage._predict`): entire-space ``p`` (ESMM products), tasks recalibrated with
    ``r = p[any_index]`` by :func:`recalibrate_multitask`, the exposure head on its own. Matching the mean of
    ``p`` on the kept rows instead is not enough: the recalibration is non-linear, so a head whose slope is off
    ends up 5-10% off in level after it. The head giving ``r`` is solved first (every task's ``q`` depends on it),
    then parents before children; bisection on ``[-bound, bound]``; a head without positive or negative weight
    gets 0. Shapes: ``logits, labels, weight (R, T)``.
    """
    L = np.asarray(logits, dtype=np.float64)
    Y = np.asarray(labels, dtype=np.float64)
    R, T = L.shape
    W = np.asarray(weight, dtype=np.float64) * np.where(np.asarray(thinned, bool)[:, None] & (Y == 0), 1.0 / w, 1.0)
    parents = list(parents)
    delta = np.zeros(T)

    def q_of(d: np.ndarray) -> np.ndarray:
        logp = np.zeros((R, T))
        done: set[int] = set()

        def fill(t: int) -> None:
            if t in done:
                return
            base = 0.0
            if parents[t] is not None:
                fill(parents[t])
                base = logp[:, parents[t]]
            logp[:, t] = base - np.logaddexp(0.0, -(L[:, t] + d[t]))
            done.add(t)

        for t in range(T):
            fill(t)
        p = np.exp(logp)
        r = p[:, any_index] if any_index is not None else np.ones(R)
        q = recalibrate_multitask(p, r, w)
        if exposure_index is not None:
            pe = p[:, exposure_index]
            q[:, exposure_index] = recalibrate_multitask(pe[:, None], pe, w)[:, 0]
        return q

    order: list[int] = []

    def visit(t: int) -> None:
        if t in order:
            return
        if parents[t] is not None:
            visit(parents[t])
        order.append(t)

    for t in ([any_index] if any_index is not None else []) + list(range(T)):
        visit(t)
    for t in order:
        target = float((W[:, t] * Y[:, t]).sum())
        if not (target > 0 and float((W[:, t] * (1.0 - Y[:, t])).sum()) > 0):
            continue
        lo, hi = -bound, bound
        for _ in range(50):
            delta[t] = 0.5 * (lo + hi)
            if float((W[:, t] * q_of(delta)[:, t]).sum()) < target:
                lo = delta[t]
            else:
                hi = delta[t]
        delta[t] = 0.5 * (lo + hi)
    return delta


# ------------------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------------------


def row_spec(ds: Dataset, ctx: FeatureContext, upstream, cfg: RankConfig) -> tuple[list[str], list[str], RankConfig]:
    """(tasks, feature names, row config) of the heavy ranker's rows for ``cfg`` served by ``upstream``: the
    tasks checked against the dataset, ``cfg.features`` or :func:`default_features` (the upstream's pre-ranker
    score only when it has one), and the config :func:`build_rank_rows` builds them with (``examples: both``
    with the exposure head). Raises on a config the dataset cannot train."""
    tasks = resolve_tasks(ds, cfg.tasks)
    prerank = next((s for s, _ in upstream.stages if s.name == "prerank"), None)
    names = list(cfg.features) or default_features(ctx, prerank is not None)
    embedded_features(names, ctx, ds)  # checks the names (ValueError listing the available ones)
    if cfg.train.task_weights and len(cfg.train.task_weights) != len(tasks):
        raise ConfigError(f"rank.train.task_weights: need one weight per task {tasks}, got "
                          f"{list(cfg.train.task_weights)}")
    if cfg.exposure and not ds.schema.has_impressions:
        raise ConfigError("rank.exposure: the exposure head learns which candidates the logging policy "
                          "showed, so it needs a dataset with impressions (dataset.yaml has_impressions: "
                          "true); set rank.exposure: false")
    if EXPOSURE in tasks:
        raise ValueError(f"rank.tasks: the dataset label {EXPOSURE!r} clashes with the exposure head's name")
    return tasks, names, dataclasses.replace(cfg, examples=Examples.BOTH) if cfg.exposure else cfg


class RankStage:
    """The heavy ranker as a :class:`recsys.engine.ScoringStage` (``name`` = "rank")."""

    name = "rank"

    def __init__(self, cfg: RankConfig | None = None) -> None:
        self.cfg: RankConfig | None = cfg
        self.ctx: FeatureContext | None = None
        self.enc: InputEncoder | None = None
        self.net: RankerNet | None = None
        self.tasks: list[str] = []  # the exposed tasks (p_<task> outputs), in order
        self.model_tasks: list[str] = []  # the network's heads: tasks, then possibly ANY_TASK
        self.parents: list[int | None] = []  # ESMM parent of each head
        self.any_index: int | None = None  # head whose probability is P_s(any task positive)
        self.exposure_index: int | None = None  # head of P(shown | candidate) (rank.exposure)
        self.w: float = 1.0
        self.skipped: list[str] = []
        self.valid_metrics: dict = {}
        self.fit_history: FitHistory | None = None
        self._net64: tuple[RankerNet, RankerNet] | None = None  # (the float32 net it copies, float64 copy)

    # ---------------------------------------------------------------------------------------------------
    def fit(self, ctx: FitContext) -> "RankStage":
        """Train on ``ctx.window_df`` (the heavy ranker's window) with histories from ``ctx.history``, on the
        candidates ``ctx.upstream`` serves plus the window's impressions, with features as of the window's start
        (``ctx.features``); with several cut points (``ctx.cuts``) on the rows of each, pooled."""
        if not isinstance(self.cfg, RankConfig):
            raise TypeError(f"RankStage: the constructor needs a RankConfig, got {type(self.cfg).__name__}")
        cuts = []
        for c in ctx.cuts:
            if c.upstream is None:
                raise ValueError("RankStage.fit: the fit context has no upstream engine (the candidates it serves)")
            cuts.append((c.upstream, c.feature_context(self.cfg), c.window_df, c.history))
        return self._fit(ctx.ds, ctx.catalog, cuts, self.cfg)

    @property
    def feature_names(self) -> list[str]:
        self._check_fitted()
        return list(self.enc.names)

    def _fit(self, ds: Dataset, catalog: Catalog, cuts: list, cfg: RankConfig) -> "RankStage":
        """``cuts``: [(upstream engine, feature context, window events, events before the window)], oldest
        first; the rows of every cut are pooled, the last cut's upstream names the default features and its
        feature context is kept (the serving snapshot replaces it)."""
        for _, ctx, _, _ in cuts:
            if ctx.graph_cfg != cfg.graph or ctx.params != cfg.feature_params:
                raise ValueError("RankStage.fit: ctx was fitted with other graph / feature parameters than "
                                 "rank.graph / rank.feature_params; the serving snapshot refits the context from "
                                 "the config, so training on another one would skew the features")
        upstream, ctx, _, _ = cuts[-1]
        window_df = pd.concat([w for _, _, w, _ in cuts], ignore_index=True) if len(cuts) > 1 else cuts[0][2]
        tasks, names, row_cfg = row_spec(ds, ctx, upstream, cfg)
        rows = RankRows.concat([build_rank_rows(ds, catalog, up, c, w, past, row_cfg, tasks, names)
                                for up, c, w, past in cuts])
        prerank = next((s for s, _ in upstream.stages if s.name == "prerank"), None)
        return self.fit_rows(ds, catalog, rows, ctx, cfg, window_df, prerank=prerank, cut_points=len(cuts))

    def fit_rows(self, ds: Dataset, catalog: Catalog, rows: RankRows, ctx: FeatureContext, cfg: RankConfig,
                 window_df: pd.DataFrame, prerank=None, cut_points: int = 1) -> "RankStage":
        """Train on rows already built by :func:`build_rank_rows` with :func:`row_spec`'s tasks, features and row
        config (e.g. a bootstrap resample of them); ``ctx`` is kept as the stage's feature context,
        ``window_df`` gives the ESMM parents, ``prerank`` (the upstream pre-ranker, or None) only a validation
        metric (it needs the rows' candidate blocks)."""
        tasks, names = list(rows.tasks), list(rows.names)
        embedded = embedded_features(names, ctx, ds)
        # with the exposure head the tasks are conditional on being shown: they learn from the shown rows only
        task_rows = rows.shown if cfg.exposure else np.ones(len(rows), dtype=bool)

        # tasks with a signal
        lab = rows.labels[task_rows]
        kept = [j for j in range(len(tasks)) if len(lab) and lab[:, j].min() != lab[:, j].max()]
        self.skipped = [tasks[j] for j in range(len(tasks)) if j not in kept]
        for t in self.skipped:
            const = int(rows.labels[0, tasks.index(t)]) if len(rows) else 0
            logger.warning("rank: task %r is skipped: its label is constant (%d) on all %d training rows of the "
                           "window", t, const, len(rows))
        if not kept:
            raise ValueError(f"rank.tasks: every task's label is constant in the training window ({tasks}); "
                             "nothing to learn")
        tasks_k = [tasks[j] for j in kept]
        value({t: np.zeros((1, 1)) for t in tasks_k}, cfg.value)  # a value model naming a missing task fails now
        Y = rows.labels[:, kept].astype(np.float32)
        parents: list[int | None] = [None] * len(tasks_k)
        if cfg.esmm:
            parents = detect_esmm_parents(window_df, tasks_k)
            for j, p in enumerate(parents):
                if p is not None:
                    logger.info("rank: ESMM: %r is modelled as P(%s) * P(%s | %s)", tasks_k[j], tasks_k[p],
                                tasks_k[j], tasks_k[p])
        any_pos = Y.max(axis=1)
        w = cfg.downsample_w
        cover = next((j for j in range(len(tasks_k)) if np.array_equal(Y[:, j], any_pos)), None)
        model_tasks, any_index = list(tasks_k), cover
        if w < 1.0 and cover is None:
            model_tasks.append(ANY_TASK)
            parents.append(None)
            Y = np.concatenate([Y, any_pos[:, None]], axis=1)
            any_index = len(model_tasks) - 1
            logger.info("rank: no task is positive exactly when any task is; an auxiliary head %r learns P(any) "
                        "for the recalibration", ANY_TASK)
        exposure_index, sw = None, None
        if cfg.exposure:
            model_tasks.append(EXPOSURE)
            parents.append(None)
            Y = np.concatenate([Y, rows.shown[:, None].astype(np.float32)], axis=1)
            exposure_index = len(model_tasks) - 1
            # per-(row, head) loss weights: the tasks (and P(any)) on the shown rows; the exposure head on the
            # funnel candidates (the serving distribution), where a shown row without engagement, downsampled
            # at rate w like the unshown ones, counts 1 / w so that for this head only the unshown rows are
            # thinned and He et al.'s recalibration holds for it too
            sw = np.zeros(Y.shape, dtype=np.float32)
            sw[:, :exposure_index] = task_rows[:, None]
            sw[:, exposure_index] = rows.funnel * np.where(rows.shown & (any_pos == 0), 1.0 / w, 1.0)
        weights = tuple(cfg.train.task_weights[j] for j in kept) if cfg.train.task_weights else ()
        if weights:
            weights = weights + (1.0,) * (len(model_tasks) - len(weights))
        train_cfg = dataclasses.replace(cfg.train, task_weights=weights)

        # user-level holdout (one request per user and cut point: a held-out user is held out at every cut),
        # negative downsampling
        G = len(rows.requests)
        all_users = pd.unique(rows.user_ids)
        tr_users, va_users = split_groups(len(all_users), cfg.valid_fraction, cfg.seed)
        va_groups = np.flatnonzero(np.isin(rows.user_ids, all_users[va_users]))
        is_valid = np.isin(rows.req, va_groups)
        keep = downsample_negatives(any_pos.astype(np.int8), w, cfg.seed) if w < 1.0 else np.ones(len(rows), bool)
        tr_rows = np.flatnonzero(~is_valid & keep)
        va_rows = np.flatnonzero(is_valid & keep)
        if len(va_rows) == 0:
            logger.warning("rank: no validation users (valid_fraction=%s, %d users): early stopping monitors the "
                           "training rows", cfg.valid_fraction, G)
            va_rows = tr_rows

        row_users = rows.user_ids[rows.req]  # external ids
        enc = InputEncoder.fit(rows.X[~is_valid], row_users[~is_valid], names, embedded,
                               catalog.n_items, cfg.history_len, cfg.user_id, cfg.dense_log)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net = build_net(cfg, enc, len(model_tasks))
        users = row_users
        cat, dense = enc.transform(rows.X, users)
        hist = enc.history(rows.requests) if cfg.history_len > 0 else None
        init_head_biases(net, Y[tr_rows], parents, None if sw is None else sw[tr_rows])
        model = _RowsModel(net, hist, catalog.n_items, enc.users.oov if enc.users is not None else 0,
                           cfg.user_dropout if enc.users is not None else 0.0)
        tensors = {"cat": torch.from_numpy(cat), "dense": torch.from_numpy(dense), "req": torch.from_numpy(rows.req),
                   "item_idx": torch.from_numpy(rows.item)}
        yt = torch.from_numpy(Y)
        take = lambda idx: {k: v[torch.from_numpy(idx)] for k, v in tensors.items()}  # noqa: E731
        swt = None if sw is None else torch.from_numpy(sw)
        history = fit_multitask(model, take(tr_rows), yt[tr_rows], take(va_rows), yt[va_rows], train_cfg, parents,
                                sample_weight=None if swt is None else swt[tr_rows],
                                valid_weight=None if swt is None else swt[va_rows])
        offsets = np.zeros(len(model_tasks))
        if cfg.calibrate_intercepts:
            # the heads' levels on the held-out users' rows, all of them (not downsampled), after the
            # recalibration, as served (Platt scaling's practice: a level set on the training users' rows is
            # 7-12% too high on every other user of the demo world); without held-out users, on the kept
            # training rows weighted back to the full distribution
            if is_valid.any():
                cal_rows = np.flatnonzero(is_valid)
                thinned = np.zeros(len(cal_rows), dtype=bool)
                cal_w = np.ones((len(cal_rows), Y.shape[1])) if sw is None else sw[cal_rows].astype(np.float64)
                if exposure_index is not None:
                    cal_w[:, exposure_index] = rows.funnel[cal_rows]  # full rows: no 1 / w
            else:
                cal_rows, thinned = tr_rows, any_pos[tr_rows] == 0
                cal_w = np.ones((len(cal_rows), Y.shape[1])) if sw is None else sw[cal_rows].astype(np.float64)
            offsets = level_offsets(predict_logits(model, take(cal_rows)), Y[cal_rows], cal_w, parents, any_index,
                                    exposure_index, w, thinned)
            with torch.no_grad():
                for head, d in zip(task_heads(net.core), offsets):
                    head.bias.add_(float(d))

        self.cfg, self.ctx, self.enc, self.net = cfg, ctx, enc, net
        self.tasks, self.model_tasks, self.parents, self.any_index, self.w = tasks_k, model_tasks, parents, any_index, w
        self.exposure_index = exposure_index
        self.fit_history = history
        metrics = {
            "users": int(len(all_users)), "requests": int(G), "cut_points": cut_points, "rows": int(len(rows)),
            "train_rows": int(len(tr_rows)),
            "train_rows_before_downsampling": int((~is_valid).sum()), "valid_users": int(len(va_groups)),
            "downsample_w": w, "tasks": tasks_k, "skipped_tasks": self.skipped,
            "esmm_parents": {tasks_k[j]: tasks_k[p] for j, p in enumerate(parents[: len(tasks_k)]) if p is not None},
            "recalibration": ("none" if w == 1.0 else f"cover task {tasks_k[cover]!r}" if cover is not None
                              else f"auxiliary head {ANY_TASK!r}"),
            "exposure": bool(cfg.exposure), "funnel_rows": int(rows.funnel.sum()), "shown_rows": int(rows.shown.sum()),
            "epochs": history.epochs, "best_epoch": history.best_epoch,
            "intercept_offsets": dict(zip(model_tasks, np.round(offsets, 6).tolist())),
            "best_valid_logloss": history.best_valid_logloss,
            "positives": dict(zip(tasks_k, Y[:, : len(tasks_k)].sum(axis=0).astype(int).tolist())),
            "dense_features": len(enc.dense), "missing_indicators": len(enc.missing),
            "embedded_features": list(enc.embedded),
        }
        all_valid = np.flatnonzero(is_valid)  # the validation users' full (not downsampled) rows
        full_valid = all_valid[task_rows[all_valid]]
        if len(all_valid):
            q_all, _ = self._predict(rows.X[all_valid], users[all_valid], rows.item[all_valid],
                                     hist[rows.req[all_valid]] if hist is not None else None)
            q = q_all[task_rows[all_valid]]
            yv = rows.labels[full_valid][:, kept]
            per_task = {}
            for j, t in enumerate(tasks_k):
                y = yv[:, j]
                if 0 < y.sum() < len(y):
                    per_task[t] = {"auc": auc(y, q[:, j]), "logloss": logloss(y, q[:, j]),
                                   "calibration": float(q[:, j].sum() / y.sum())}
            if cfg.exposure:
                fv = rows.funnel[all_valid]
                y, qe = rows.shown[all_valid][fv].astype(np.int8), q_all[fv, len(tasks_k)]
                if 0 < y.sum() < len(y):
                    per_task[EXPOSURE] = {"auc": auc(y, qe), "logloss": logloss(y, qe),
                                          "calibration": float(qe.sum() / y.sum())}
            metrics["valid"] = per_task
            y0 = yv[:, 0]
            if len(full_valid) and 0 < y0.sum() < len(y0):
                if prerank is not None:
                    sub = _subset_rows(rows, full_valid)
                    metrics["valid"][tasks_k[0]]["auc_prerank"] = score_auc(y0, sub.stage_scores(prerank))
                ann = rows.source_scores("ann")[full_valid]
                if np.isfinite(ann).any():
                    metrics["valid"][tasks_k[0]]["auc_ann"] = score_auc(y0, ann)
        self.valid_metrics = metrics
        logger.info("heavy ranker: %s", metrics)
        return self

    # ---------------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.net is None or self.enc is None or self.ctx is None:
            raise RuntimeError("RankStage: call fit() or load() first")

    def _scoring_net(self) -> RankerNet:
        """A float64 copy of the network for scoring. BLAS picks different kernels for different batch sizes
        (e.g. gemv for one row), which in float32 changes about one output in a thousand in its last bit; in
        float64 the same differences are ~1e-16, far below the float32 rounding applied to the probabilities,
        so a row's scores do not depend on the rows scored with it."""
        if self._net64 is None or self._net64[0] is not self.net:
            self._net64 = (self.net, copy.deepcopy(self.net).double().eval())
        return self._net64[1]

    @property
    def outputs(self) -> list[str]:
        """The exposed probabilities, in the column order of :meth:`_predict`'s ``q``: the tasks, then
        :data:`~recsys.rank.value.EXPOSURE` when the stage has the exposure head."""
        return self.tasks + ([EXPOSURE] if self.exposure_index is not None else [])

    def with_value(self, value_cfg: ValueConfig) -> "RankStage":
        """The same fitted stage (shared network) with another value model, e.g. for an ablation."""
        self._check_fitted()
        other = copy.copy(self)
        other.cfg = dataclasses.replace(self.cfg, value=value_cfg)
        return other

    def _predict(self, X: np.ndarray, user_ids: np.ndarray, items: np.ndarray, hist: np.ndarray | None):
        """(q (R, O) recalibrated probabilities of :attr:`outputs`, p (R, T_model) raw head probabilities,
        rounded to float32) of rows ``X`` (R, F), external ``user_ids`` (R,), catalogue ``items`` (R,) and
        per-row history ``hist`` (R, L). The exposure head, trained with the unshown funnel candidates kept
        at rate w, is recalibrated on its own: ``q = p / (p + (1 - p) / w)``."""
        cat, dense = self.enc.transform(X, user_ids)
        R = len(X)
        model = _RowsModel(self._scoring_net(), hist, self.enc.n_items).eval()
        tensors = {"cat": torch.from_numpy(cat), "dense": torch.from_numpy(dense.astype(np.float64)),
                   "req": torch.arange(R, dtype=torch.int64), "item_idx": torch.from_numpy(np.asarray(items, np.int64))}
        p = predict(model, tensors, _PREDICT_BATCH, self.parents).astype(np.float32).astype(np.float64)
        r = p[:, self.any_index] if self.any_index is not None else np.ones(R)
        q = recalibrate_multitask(p[:, : len(self.tasks)], r, self.w)
        if self.exposure_index is not None:
            pe = p[:, self.exposure_index]
            q = np.concatenate([q, recalibrate_multitask(pe[:, None], pe, self.w)], axis=1)
        return q, p

    def score(self, requests: Requests, candidates: Candidates) -> dict[str, np.ndarray]:
        """{"score": value (B, C), "p_<task>": recalibrated probability (B, C) per task (and ``p_exposure``
        with the exposure head)}, float64; ``-inf`` (score) and NaN (probabilities) at padding."""
        self._check_fitted()
        items = np.asarray(candidates.items)
        B, C = items.shape
        out = {"score": np.full((B, C), -np.inf)}
        probs = {t: np.full((B, C), np.nan) for t in self.outputs}
        valid = (items >= 0) & (items < self.enc.n_items)
        if valid.any():
            x = assemble(requests, candidates, self.ctx, self.enc.names)  # (B, C, F)
            b, c = np.nonzero(valid)
            users = request_user_ids(requests, self.ctx.catalog)
            hist = self.enc.history(requests)[b] if self.enc.history_len > 0 else None
            checkpoint()  # under a serving deadline: stop here once the stage's budget has passed
            q, _ = self._predict(x[b, c], users[b], items[b, c], hist)
            for j, t in enumerate(self.outputs):
                probs[t][b, c] = q[:, j]
            out["score"][b, c] = value({t: q[:, j] for j, t in enumerate(self.outputs)}, self.cfg.value)
        out.update({f"p_{t}": v for t, v in probs.items()})
        return out

    def predict_rows(self, rows: RankRows) -> tuple[np.ndarray, np.ndarray]:
        """(q (R, T), p (R, T_model)) for rows built by :func:`build_rank_rows` with this stage's features."""
        self._check_fitted()
        if rows.names != self.enc.names:
            raise ValueError(f"predict_rows: the rows' features {rows.names} differ from the model's {self.enc.names}")
        users = rows.user_ids[rows.req]
        hist = self.enc.history(rows.requests)[rows.req] if self.enc.history_len > 0 else None
        return self._predict(rows.X, users, rows.item, hist)

    # ---------------------------------------------------------------------------------------------------
    # ---------------------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write the stage into ``folder`` (created); see the module docstring for the layout."""
        from safetensors.torch import save_file

        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().clone() for k, v in self.net.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        np.save(folder / "dense_mean.npy", self.enc.mean.astype(np.float64), allow_pickle=False)
        np.save(folder / "dense_std.npy", self.enc.std.astype(np.float64), allow_pickle=False)
        if self.enc.users is not None:
            self.enc.users.save(folder / "user_vocab.parquet")
        write_json(folder / "rank.json", {
            "format_version": FORMAT_VERSION, "config": to_dict(self.cfg), "tasks": self.tasks,
            "model_tasks": self.model_tasks, "parents": self.parents, "any_index": self.any_index,
            "exposure_index": self.exposure_index, "w": self.w,
            "skipped_tasks": self.skipped, "inputs": self.enc.to_json(), "valid_metrics": self.valid_metrics,
        })
        self.ctx.save(folder / "features")

    @classmethod
    def load(cls, folder: str | Path, catalog: Catalog) -> "RankStage":
        """Rebuild a saved stage for ``catalog`` (no pickle: JSON, .npy and safetensors)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        meta_path = folder / "rank.json"
        meta = read_stage_meta(meta_path, "heavy ranker", FORMAT_VERSION)
        cfg = from_dict(RankConfig, meta["config"], prefix=f"{meta_path}: config")
        inputs = meta["inputs"]
        if inputs["n_items"] != catalog.n_items:
            raise ValueError(f"{meta_path}: trained for {inputs['n_items']} items, but the catalogue has "
                             f"{catalog.n_items} items")
        mean = np.load(folder / "dense_mean.npy", allow_pickle=False)
        std = np.load(folder / "dense_std.npy", allow_pickle=False)
        users = Vocab.load(folder / "user_vocab.parquet") if inputs["user_field"] else None
        enc = InputEncoder.from_json(inputs, mean, std, users)
        if mean.shape != (len(enc.dense),) or std.shape != (len(enc.dense),):
            raise ValueError(f"{folder}: dense_mean / dense_std have shapes {mean.shape} / {std.shape}, expected "
                             f"({len(enc.dense)},)")
        ctx = FeatureContext.load(folder / "features", catalog)
        try:
            resolve(enc.names, ctx)
        except ValueError as exc:
            raise ValueError(f"{meta_path}: the model was trained on features the registry does not provide "
                             f"({exc})") from None
        self = cls()
        with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten; keep the caller's RNG
            net = build_net(cfg, enc, len(meta["model_tasks"]))
        net.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
        net.eval()
        self.cfg, self.ctx, self.enc, self.net = cfg, ctx, enc, net
        self.tasks, self.model_tasks = list(meta["tasks"]), list(meta["model_tasks"])
        self.parents = [None if p is None else int(p) for p in meta["parents"]]
        self.any_index = None if meta["any_index"] is None else int(meta["any_index"])
        ei = meta.get("exposure_index")
        self.exposure_index = None if ei is None else int(ei)
        if (self.exposure_index is not None) != bool(cfg.exposure) or (
                self.exposure_index is not None and self.model_tasks[self.exposure_index] != EXPOSURE):
            raise ValueError(f"{meta_path}: exposure_index {ei!r} does not match rank.exposure={cfg.exposure} and "
                             f"the heads {self.model_tasks}")
        self.w, self.skipped = float(meta["w"]), list(meta.get("skipped_tasks", []))
        self.valid_metrics = meta.get("valid_metrics", {})
        return self


def score_auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUC of any score (not only probabilities): NaN / -inf (e.g. a candidate a source did not return) rank
    below every finite score; ties count 1/2 (:func:`offline_eval.calibration.auc` of the normalised ranks)."""
    from scipy.stats import rankdata

    s = np.asarray(s, dtype=np.float64)
    fin = np.isfinite(s)
    low = (s[fin].min() - 1.0) if fin.any() else 0.0
    r = rankdata(np.where(fin, s, low), method="average")
    return auc(y, r / len(r))


def _subset_rows(rows: RankRows, sel: np.ndarray) -> RankRows:
    """The rows ``sel`` (R',) of ``rows`` (same requests and blocks)."""
    return dataclasses.replace(
        rows, req=rows.req[sel], col=rows.col[sel], item=rows.item[sel], X=rows.X[sel], labels=rows.labels[sel],
        shown=rows.shown[sel], funnel=rows.funnel[sel], truth=None if rows.truth is None else rows.truth[sel])


def reliability_tables(reports: dict[str, dict]) -> dict[str, dict[str, np.ndarray]]:
    """{task: bin table as arrays} from :meth:`RankStage.calibration`'s reports, for
    :func:`offline_eval.calibration.reliability_diagram`."""
    return {t: {k: np.asarray(v) for k, v in rep["reliability"].items()} for t, rep in reports.items()}


__all__ = ["ANY_TASK", "SOURCE_DEPENDENT", "Examples", "InputEncoder", "RankConfig", "RankRows", "RankStage",
           "binary_labels", "build_net", "build_rank_rows", "default_features", "detect_esmm_parents",
           "embedded_features", "init_head_biases", "level_offsets", "recalibrate_multitask",
           "reliability_tables", "request_user_ids", "resolve_tasks", "row_spec", "score_auc", "task_heads"]
