"""The full-ranking offline evaluator, with local and Ray backends.

Shapes: ``B`` test users (one request each), ``N`` items in the catalogue, ``K`` ranked positions,
``C`` candidates a funnel stage passed on.

**Protocol.** Every test user is one request at the time of their first event in the test window, with the
history of their engagements before the window. A system ranks the *whole* catalogue (no sampled negatives:
sampled metrics disagree with exact ones, Krichene & Rendle, "On sampled metrics for item recommendation",
KDD 2020) and returns its top ``K``. The relevant items of a user are the items they engaged with in the test
window, with graded gain

    gain(u, i) = max over the (u, i) engagement events e of  sum_l  w_l * label_l(e)

(``eval.gains``: ``{label: weight}``; default the binary positive label with weight 1). With
``eval.exclude_seen`` (default) items the user engaged with before the window are removed both from the
ranking (the request's ``exclude``) and from the relevance, so a system is never rewarded for recalling a
training item. Users left without a relevant item are dropped (and counted).

**What is computed** (see :class:`SystemEval`):

* every metric of ``eval.metrics x eval.ks`` per user (:func:`offline_eval.metrics.compute`), plus the
  headline metrics :data:`HEADLINE` that every report shows;
* beyond-accuracy metrics of the top ``k_ba`` items, ``k_ba`` = the largest cut-off in ``eval.ks`` that is
  ``<= 10`` (the length of a typical shown slate; the smallest cut-off when none is <= 10): catalogue coverage,
  novelty (with Laplace-smoothed item shares ``p(i) = (count_i + 1) / (total + N)`` of the engagements before
  the window, so unseen items have finite self-information), intra-list diversity over the items' ``category``
  (when the items table has one) and average popularity;
* segments: metric means over warm users (known to the catalogue) and cold users (OOV); recall@k of *head*
  items (the most engaged items that together make up ``eval.head_fraction`` of the engagements before the
  window) and of *tail* items (the rest), each averaged over the users that have such a relevant item;
* the funnel: for every stage in :attr:`recsys.types.Results.stages`, recall@C = |relevant ∩ candidates| /
  |relevant|, averaged over users: the ceiling that stage leaves to the stages after it.

**Backends.** Requests are cut into ``eval.shards`` consecutive shards of ``ceil(B / shards)`` users; each
shard is ranked and scored by :func:`_eval_shard` through :func:`recsys.distributed.map_shards`, in this
process (local) or as Ray tasks (the system is ``ray.put`` once). Every per-user number depends only on that
user's row, so both backends give identical numbers (tested to 1e-12).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from offline_eval import metrics as M
from recsys.config import Backend, Config, EvalConfig, RayConfig, to_dict
from recsys.data.catalog import Catalog, positives
from recsys.data.schema import Dataset, Role
from recsys.data.split import Split, split_dataset
from recsys.distributed import init_ray, map_shards, shutdown
from recsys.types import Ragged, Ranker, Requests, Results, top_k

logger = logging.getLogger(__name__)

#: metrics every evaluation computes (and every report shows), whatever ``eval.metrics`` / ``eval.ks`` say
HEADLINE: tuple[str, ...] = ("ndcg@10", "mrr@10", "map@10", "recall@10", "recall@100")
#: the metric the comparisons (paired bootstrap) are made on
PRIMARY_METRIC = "ndcg@10"


# ----------------------------------------------------------------------------------------------------------
# evaluation data


@dataclasses.dataclass
class EvalData:
    """The test users of one window, their requests and their relevant items (see the module docstring).

    requests        B requests (users, first test event time, history before the window, exclusions, context)
    qrels           (B, N) csr_matrix float64 of gains > 0 (canonical: sorted indices, no duplicates)
    user_ids        (B,) external user ids (row order of ``qrels`` and ``requests``)
    warm            (B,) bool, user known to the catalogue (not OOV)
    head_items      (N,) bool, the head items (``head_fraction`` of the engagements before the window)
    item_counts     (N,) int64 engagements per item before the window
    item_categories (N,) int64 category code per item (from the items table's ``category``), or None
    stats           counts: users in the window, dropped users and why, relevant pairs, removed seen pairs
    """

    requests: Requests
    qrels: sp.csr_matrix
    user_ids: np.ndarray
    warm: np.ndarray
    head_items: np.ndarray
    item_counts: np.ndarray
    item_categories: np.ndarray | None
    catalog: Catalog
    window: str = "test"
    positive_label: str = ""
    gains: dict[str, float] = dataclasses.field(default_factory=dict)
    stats: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.qrels.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.qrels.shape[1])

    @classmethod
    def from_split(cls, split: Split, cfg: EvalConfig, catalog: Catalog, window: str = "test") -> "EvalData":
        """Build the evaluation data of ``window`` from a split (engagements before it are the past)."""
        schema = split.dataset.schema
        labels = schema.labels
        pos = cfg.positive_label or schema.positive_label
        if pos not in labels:
            raise ValueError(f"eval.positive_label: {pos!r} is not a label column of interactions; labels: {labels}")
        gains = dict(cfg.gains) or {pos: 1.0}
        for name in gains:
            if name not in labels:
                raise ValueError(f"eval.gains: {name!r} is not a label column of interactions; labels: {labels}")
        ucol, icol, tcol = catalog.user_col, catalog.item_col, catalog.time_col
        n_items = catalog.n_items

        test = split[window]
        test = test.iloc[np.argsort(test[tcol].to_numpy(), kind="stable")]
        first = test.drop_duplicates(ucol, keep="first")  # each user's first event in the window
        window_users = pd.Index(first[ucol].to_numpy())
        n_window_users = len(window_users)

        # relevant (user, item) pairs and their gains
        tp = positives(test, pos)
        gain = np.zeros(len(tp), dtype=np.float64)
        for name, w in gains.items():
            gain += float(w) * tp[name].to_numpy(dtype=np.float64)
        u = window_users.get_indexer(tp[ucol].to_numpy()).astype(np.int64)
        i = catalog.items.encode(tp[icol].to_numpy())
        keep = (i < catalog.items.oov) & (gain > 0)
        n_outside = int((i >= catalog.items.oov).sum())
        if n_outside:
            logger.warning("%d test engagements are with items outside the catalogue; ignored", n_outside)
        u, i, gain = u[keep], i[keep], gain[keep]
        users_with_positive = np.unique(u)

        past = positives(split.before(window), pos)
        removed_seen = 0
        if cfg.exclude_seen and len(u):
            pu = window_users.get_indexer(past[ucol].to_numpy()).astype(np.int64)
            pi = catalog.items.encode(past[icol].to_numpy())
            ok = (pu >= 0) & (pi < catalog.items.oov)
            seen_keys = np.unique(pu[ok] * n_items + pi[ok])
            is_seen = np.isin(u * n_items + i, seen_keys)
            removed_seen = int(is_seen.sum())
            u, i, gain = u[~is_seen], i[~is_seen], gain[~is_seen]

        # max gain over repeated events of a pair: sort by key then gain, keep each key's last row
        key = u * n_items + i
        order = np.lexsort((gain, key))
        key, gain = key[order], gain[order]
        last = np.r_[key[1:] != key[:-1], True] if len(key) else np.zeros(0, dtype=bool)
        key, gain = key[last], gain[last]
        u, i = key // n_items, key % n_items

        rows = np.unique(u)  # window-user positions with >= 1 relevant item, in first-event order
        stats = {
            "window_users": n_window_users,
            "users_without_engagement": int(n_window_users - len(users_with_positive)),
            "users_with_only_seen_items": int(len(users_with_positive) - len(rows)),
            "removed_seen_pairs": removed_seen,
        }
        if cfg.max_users > 0 and len(rows) > cfg.max_users:
            rng = np.random.default_rng(cfg.seed)
            rows = np.sort(rng.choice(rows, size=cfg.max_users, replace=False))
            stats["sampled_out"] = int(len(np.unique(u)) - len(rows))
        if len(rows) == 0:
            raise ValueError(
                f"window {window!r}: no user has a relevant item (positive label {pos!r}"
                f"{', after removing items seen before the window' if cfg.exclude_seen else ''})"
            )
        new_row = np.full(n_window_users, -1, dtype=np.int64)
        new_row[rows] = np.arange(len(rows))
        r = new_row[u]
        sel = r >= 0
        qrels = sp.csr_matrix((gain[sel], (r[sel], i[sel])), shape=(len(rows), n_items), dtype=np.float64)
        qrels.sum_duplicates()
        qrels.sort_indices()

        user_ids = window_users.to_numpy()[rows]
        first_rows = first.iloc[rows]
        context = {c: first_rows[c].to_numpy() for c in schema.context_columns if c in first_rows.columns}
        requests = catalog.requests(
            user_ids, first_rows[tcol].to_numpy(dtype=np.int64), past, exclude_seen=cfg.exclude_seen, context=context
        )
        warm = requests.users != catalog.users.oov

        pi = catalog.items.encode(past[icol].to_numpy())
        item_counts = np.bincount(pi[pi < catalog.items.oov], minlength=n_items).astype(np.int64)
        head = head_items(item_counts, cfg.head_fraction)
        cats = item_categories(split.dataset, catalog)
        stats.update(users=int(len(rows)), relevant_pairs=int(qrels.nnz), warm_users=int(warm.sum()))
        logger.info(
            "evaluation window %r: %d users (%d warm), %d relevant pairs; dropped %d without engagement, "
            "%d with only already-seen items",
            window, len(rows), int(warm.sum()), qrels.nnz, stats["users_without_engagement"],
            stats["users_with_only_seen_items"],
        )
        return cls(
            requests=requests,
            qrels=qrels,
            user_ids=user_ids,
            warm=warm,
            head_items=head,
            item_counts=item_counts,
            item_categories=cats,
            catalog=catalog,
            window=window,
            positive_label=pos,
            gains=gains,
            stats=stats,
        )


def head_items(item_counts: np.ndarray, fraction: float) -> np.ndarray:
    """(N,) bool: the most engaged items that together make up ``fraction`` of all engagements.

    Items are taken by count descending (ties: lower index first) while the count *before* adding an item is
    below ``fraction * total``; items never engaged are never head. Returns all False when there is no
    engagement.
    """
    counts = np.asarray(item_counts, dtype=np.int64)
    head = np.zeros(len(counts), dtype=bool)
    total = counts.sum()
    if total == 0 or fraction <= 0:
        return head
    order = np.lexsort((np.arange(len(counts)), -counts))
    before = np.cumsum(counts[order]) - counts[order]
    take = (before < fraction * total) & (counts[order] > 0)
    head[order[take]] = True
    return head


def item_categories(ds: Dataset, catalog: Catalog) -> np.ndarray | None:
    """(N,) int64 codes of the items table's ``category`` column, aligned with the catalogue, or None.

    Items missing from the items table (or with a missing category) share one extra code.
    """
    if ds.items is None or "category" not in ds.items.columns or "items" not in ds.schema.tables:
        return None
    spec = ds.schema.tables["items"]
    if "category" not in spec.columns or spec.columns["category"].role is not Role.CATEGORICAL:
        return None
    idcol = spec.names(Role.ITEM_ID)[0]
    codes, _ = pd.factorize(ds.items["category"])
    cats = np.full(catalog.n_items, -1, dtype=np.int64)
    idx = catalog.items.encode(ds.items[idcol].to_numpy())
    ok = idx < catalog.items.oov
    cats[idx[ok]] = codes[ok]
    cats[cats < 0] = codes.max(initial=-1) + 1
    return cats


# ----------------------------------------------------------------------------------------------------------
# per-shard work (runs in this process or in a Ray worker)


@dataclasses.dataclass(frozen=True)
class _ShardSpec:
    k: int  # positions to rank
    metrics: tuple[str, ...]  # per-user metrics to compute
    seg_ks: tuple[int, ...]  # cut-offs of the head / tail recall
    head: np.ndarray  # (N,) bool head items
    n_items: int


def restrict_columns(q: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """The (B, N) csr ``q`` with only the columns where ``keep`` (N,) is True (others dropped), same shape."""
    sel = np.asarray(keep, dtype=bool)[q.indices]
    row = np.repeat(np.arange(q.shape[0], dtype=np.int64), np.diff(q.indptr))
    counts = np.bincount(row[sel], minlength=q.shape[0])
    indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    return sp.csr_matrix((q.data[sel], q.indices[sel], indptr), shape=q.shape)


def set_recall(candidates: np.ndarray, qrels: sp.csr_matrix) -> np.ndarray:
    """(B,) |relevant ∩ candidates| / |relevant| per row (0 when a row has no relevant item).

    ``candidates`` (B, C) int item indices, -1 = padding; duplicates count once. Vectorized: keys
    ``b * N + item`` of the candidates are de-duplicated and looked up among the relevant keys.
    """
    b, n = qrels.shape
    cand = np.asarray(candidates, dtype=np.int64)
    if cand.shape[0] != b:
        raise ValueError(f"candidates have {cand.shape[0]} rows, qrels {b}")
    n_rel = np.diff(qrels.indptr)
    rel_keys = np.repeat(np.arange(b, dtype=np.int64) * n, n_rel) + qrels.indices
    valid = (cand >= 0) & (cand < n)
    keys = np.unique((np.arange(b, dtype=np.int64)[:, None] * n + cand)[valid])
    hits = keys[np.isin(keys, rel_keys)]
    per_row = np.bincount(hits // n, minlength=b)
    out = np.zeros(b, dtype=np.float64)
    np.divide(per_row, n_rel, out=out, where=n_rel > 0)
    return out


def _fit_width(res: Results, b: int, k: int, n_items: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The (b, k) items and scores of ``res``, truncated or padded (-1 / NaN); checks shapes and indices."""
    items = np.asarray(res.items)
    scores = np.asarray(res.scores, dtype=np.float64)
    if items.ndim != 2 or items.shape[0] != b or scores.shape != items.shape:
        raise ValueError(
            f"system {name!r}: rank() returned items of shape {items.shape} and scores of shape {scores.shape} "
            f"for {b} requests; expected (B, K) each"
        )
    if items.dtype.kind not in "iu":
        raise TypeError(f"system {name!r}: rank() returned items of dtype {items.dtype}; expected int64 indices")
    items = items[:, :k].astype(np.int64)
    scores = scores[:, :k]
    if items.size and (items.min() < -1 or items.max() >= n_items):
        raise ValueError(f"system {name!r}: rank() returned item indices outside [-1, {n_items})")
    if items.shape[1] < k:
        pad = k - items.shape[1]
        items = np.pad(items, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=np.nan)
    return items, scores


def _eval_shard(shard: tuple[Requests, sp.csr_matrix], system: Ranker, spec: _ShardSpec) -> dict[str, Any]:
    """Rank one shard of requests and compute its per-user numbers (module level: runs in Ray workers)."""
    req, qrels = shard
    t0 = time.perf_counter()
    res = system.rank(req, spec.k)
    rank_s = time.perf_counter() - t0
    items, scores = _fit_width(res, len(req), spec.k, spec.n_items, getattr(system, "name", "?"))
    per_user = M.compute(items, qrels, spec.metrics)
    seg_names = [f"recall@{k}" for k in spec.seg_ks]
    seg = {}
    for part, mask in (("head_items", spec.head), ("tail_items", ~spec.head)):
        q = restrict_columns(qrels, mask)
        seg[part] = (M.compute(items, q, seg_names), np.diff(q.indptr))
    funnel = {}
    for stage, cand in res.stages.items():
        cand = np.asarray(cand)
        if cand.ndim != 2 or cand.shape[0] != len(req):
            raise ValueError(f"system: stage {stage!r} candidates have shape {cand.shape}; expected ({len(req)}, C)")
        funnel[stage] = (set_recall(cand, qrels), int(cand.shape[1]), (cand >= 0).sum(axis=1))
    degraded = collections.Counter(d for row in res.degraded for d in row)
    return {
        "items": items,
        "scores": scores,
        "per_user": per_user,
        "segments": seg,
        "funnel": funnel,
        "degraded": dict(degraded),
        "rank_seconds": rank_s,
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------------------------------------
# evaluation of one system


@dataclasses.dataclass
class SystemEval:
    """The evaluation of one system on B users.

    per_user   {metric: (B,) float64}
    means      {metric: mean over the B users}
    beyond     beyond-accuracy metrics at ``k_ba`` ({"coverage@10": x, "novelty@10": x, ...})
    segments   {"warm_users"|"cold_users": {"n_users": n, metric: mean}, "head_items"|"tail_items": {...}}
    funnel     {stage: {"C": C, "recall@C": x, "recall": x, "mean_candidates": x}} (+ "final")
    ranked     (B, K) int64 item indices (-1 padding); scores (B, K) float64
    timings    {"rank_seconds", "wall_seconds", "users_per_second", ...}
    """

    name: str
    user_ids: np.ndarray
    per_user: dict[str, np.ndarray]
    means: dict[str, float]
    beyond: dict[str, float]
    segments: dict[str, dict[str, float]]
    funnel: dict[str, dict[str, float]]
    ranked: np.ndarray
    scores: np.ndarray
    timings: dict[str, float]
    degraded: dict[str, int] = dataclasses.field(default_factory=dict)


def metric_names(cfg: EvalConfig) -> list[str]:
    """``eval.metrics x eval.ks`` (metric-major) plus any missing :data:`HEADLINE` metric; each validated."""
    names = [f"{m}@{k}" for m in cfg.metrics for k in cfg.ks]
    names += [h for h in HEADLINE if h not in names]
    for n in names:
        M.parse_metric(n)
    return names


def beyond_k(cfg: EvalConfig) -> int:
    """The cut-off of the beyond-accuracy metrics: the largest ``eval.ks`` value <= 10, else the smallest."""
    small = [k for k in cfg.ks if k <= 10]
    return max(small) if small else min(cfg.ks)


def _shards(data: EvalData, n_shards: int) -> list[tuple[Requests, sp.csr_matrix]]:
    b = data.n_users
    size = max(1, math.ceil(b / max(1, n_shards)))
    out = []
    for start in range(0, b, size):
        rows = np.arange(start, min(start + size, b))
        out.append((data.requests.take(rows), data.qrels[start : start + len(rows)]))
    return out


def _mean(x: np.ndarray) -> float | None:
    return float(np.mean(x)) if len(x) else None


def evaluate(
    system: Ranker,
    data: EvalData,
    cfg: EvalConfig,
    backend: Backend | str | None = None,
    ray_cfg: RayConfig | None = None,
) -> SystemEval:
    """Rank all of ``data``'s requests with ``system`` and compute every number of :class:`SystemEval`.

    ``backend`` (default ``cfg.backend``): ``local`` loops over the shards; ``ray`` runs them as Ray tasks
    (starting a local Ray from ``ray_cfg`` when none is running).
    """
    backend = Backend(backend or cfg.backend)
    names = metric_names(cfg)
    k = max(M.parse_metric(n)[1] for n in names)
    seg_ks = tuple(sorted({M.parse_metric(n)[1] for n in names}))
    spec = _ShardSpec(k=k, metrics=tuple(names), seg_ks=seg_ks, head=data.head_items, n_items=data.n_items)
    name = getattr(system, "name", type(system).__name__)
    t0 = time.perf_counter()
    outs = map_shards(
        _eval_shard, _shards(data, cfg.shards), backend, ray_cfg, shared=(system, spec), desc=f"evaluate {name}"
    )
    wall = time.perf_counter() - t0

    ranked = np.concatenate([o["items"] for o in outs])
    scores = np.concatenate([o["scores"] for o in outs])
    per_user = {n: np.concatenate([o["per_user"][n] for o in outs]) for n in names}
    means = {n: float(v.mean()) for n, v in per_user.items()}

    segments: dict[str, dict[str, float]] = {}
    for seg, mask in (("warm_users", data.warm), ("cold_users", ~data.warm)):
        segments[seg] = {"n_users": int(mask.sum()), **{n: _mean(v[mask]) for n, v in per_user.items()}}
    for part in ("head_items", "tail_items"):
        n_rel = np.concatenate([o["segments"][part][1] for o in outs])
        has = n_rel > 0
        entry = {"n_users": int(has.sum())}
        for sk in seg_ks:
            v = np.concatenate([o["segments"][part][0][f"recall@{sk}"] for o in outs])
            entry[f"recall@{sk}"] = _mean(v[has])
        segments[part] = entry

    funnel: dict[str, dict[str, float]] = {}
    stages = [s for s in outs[0]["funnel"] if all(s in o["funnel"] for o in outs)]
    for stage in stages:
        rec = np.concatenate([o["funnel"][stage][0] for o in outs])
        width = max(o["funnel"][stage][1] for o in outs)
        ncand = np.concatenate([o["funnel"][stage][2] for o in outs])
        funnel[stage] = {"C": width, f"recall@{width}": float(rec.mean()), "recall": float(rec.mean()),
                         "mean_candidates": float(ncand.mean())}
    if funnel:
        rec = set_recall(ranked, data.qrels)
        funnel["final"] = {"C": k, f"recall@{k}": float(rec.mean()), "recall": float(rec.mean()),
                           "mean_candidates": float((ranked >= 0).sum(axis=1).mean())}

    beyond = beyond_accuracy(ranked[:, : beyond_k(cfg)], data)
    degraded: collections.Counter = collections.Counter()
    for o in outs:
        degraded.update(o["degraded"])
    timings = {
        "wall_seconds": wall,
        "rank_seconds": float(sum(o["rank_seconds"] for o in outs)),
        "shard_seconds": float(sum(o["seconds"] for o in outs)),
        "users_per_second": data.n_users / wall if wall > 0 else float("inf"),
        "shards": len(outs),
    }
    logger.info("%s: %s = %.4f (%d users, %.2f s, %s)", name, PRIMARY_METRIC, means.get(PRIMARY_METRIC, float("nan")),
                data.n_users, wall, backend.value)
    return SystemEval(
        name=name,
        user_ids=data.user_ids,
        per_user=per_user,
        means=means,
        beyond=beyond,
        segments=segments,
        funnel=funnel,
        ranked=ranked,
        scores=scores,
        timings=timings,
        degraded=dict(degraded),
    )


def beyond_accuracy(top: np.ndarray, data: EvalData) -> dict[str, float]:
    """Coverage, mean novelty, mean intra-list diversity (if categories) and mean popularity of (B, k) lists."""
    k = top.shape[1]
    n = data.n_items
    counts = data.item_counts.astype(np.float64)
    p = (counts + 1.0) / (counts.sum() + n)  # Laplace-smoothed engagement share
    out = {
        f"coverage@{k}": M.coverage(top, n),
        f"novelty@{k}": float(M.novelty(top, p).mean()),
        f"avg_popularity@{k}": float(M.avg_popularity(top, counts).mean()),
    }
    if data.item_categories is not None:
        out[f"diversity@{k}"] = float(M.intra_list_diversity(top, data.item_categories).mean())
    return out


# ----------------------------------------------------------------------------------------------------------
# systems and comparisons


ORACLE_FUNNEL_K = 1000


class OracleSystem:
    """Ranks by the synthetic world's true expected value (:class:`recsys.data.synthetic.Oracle`).

    The oracle's items are mapped to catalogue indices once; catalogue items it does not know get ``-inf``
    (never ranked). Excluded items are removed like any system's. The ceiling any model can reach there.
    """

    name = "oracle"

    def __init__(self, oracle: Any, catalog: Catalog) -> None:
        self.oracle = oracle
        self.n_items = catalog.n_items
        cols = catalog.items.encode(np.asarray(oracle.item_ids))
        self._valid = cols < catalog.items.oov
        self._cols = cols[self._valid]

    def value(self, requests: Requests) -> np.ndarray:
        """(B, N) the true expected value of every catalogue item at each request (-inf: unknown/unborn)."""
        if requests.user_ids is None:
            raise ValueError("OracleSystem.rank: requests need external user_ids (Catalog.requests sets them)")
        true = np.asarray(self.oracle.scores(requests.user_ids, requests.timestamps), dtype=np.float64)
        full = np.full((len(requests), self.n_items), -np.inf)
        full[:, self._cols] = true[:, self._valid]
        return full

    def rank(self, requests: Requests, k: int) -> Results:
        """The top ``k`` by true value; ``stages["top1000"]`` holds the oracle's top 1000, so the report shows
        the oracle's recall@1000 beside the engine's retrieval recall@1000 (the ceiling of a 1000-candidate
        retrieval on this world)."""
        wide = max(k, ORACLE_FUNNEL_K)
        items, scores = top_k(self.value(requests), wide, exclude=requests.exclude)
        return Results(items=items[:, :k], scores=scores[:, :k], stages={"top1000": items[:, :ORACLE_FUNNEL_K]})


TRUE_VALUE_K = 10


def true_value_ndcg(ranked: np.ndarray, value: np.ndarray, exclude: Ragged | None, k: int = TRUE_VALUE_K) -> np.ndarray:
    """Per-user NDCG of a ranked list under the synthetic world's *true* expected value (B,).

    ``true_ndcg@k(u) = sum_{r<=k} v(u, i_r) / log2(r + 1)  /  max over lists of the same``, where ``v`` (B, N)
    is the oracle's true expected gain of every item (P(click) x (1 + P(like | click))) and the ideal list is
    the top k of ``v`` over the items the system may return (exclusions removed). The oracle scores exactly 1.
    Unlike the logged-click metrics, which only see items the logging policy happened to show, this one is
    free of exposure bias: it is the ceiling-normalised quality of the list itself.
    """
    v = np.where(np.isfinite(value), value, 0.0).clip(min=0.0)
    if exclude is not None and len(exclude.values):
        v = v.copy()
        rows = np.repeat(np.arange(len(v)), exclude.lengths())
        v[rows, exclude.values] = 0.0
    kk = min(k, ranked.shape[1])
    top = ranked[:, :kk]
    disc = 1.0 / np.log2(np.arange(2, kk + 2))
    gains = np.where(top >= 0, np.take_along_axis(v, np.clip(top, 0, None), axis=1), 0.0)
    dcg = gains @ disc
    ideal = -np.sort(-v, axis=1)[:, :kk] @ disc
    return np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)


def add_true_value(evals: Mapping[str, "SystemEval"], oracle: "OracleSystem", data: "EvalData") -> None:
    """Add ``true_ndcg@10`` to every system's per-user metrics and means (synthetic worlds only)."""
    b = len(data.requests)
    for start in range(0, b, 2048):
        rows = np.arange(start, min(start + 2048, b))
        req = data.requests.take(rows)
        value = oracle.value(req)
        for ev in evals.values():
            vals = true_value_ndcg(ev.ranked[rows], value, req.exclude)
            ev.per_user.setdefault(f"true_ndcg@{TRUE_VALUE_K}", np.zeros(b))[rows] = vals
    for ev in evals.values():
        ev.means[f"true_ndcg@{TRUE_VALUE_K}"] = float(ev.per_user[f"true_ndcg@{TRUE_VALUE_K}"].mean()) if b else 0.0


def compare(a: SystemEval, b: SystemEval, metric: str = PRIMARY_METRIC, n_samples: int = 1000, seed: int = 0) -> dict:
    """Paired bootstrap of ``mean(a) - mean(b)`` on ``metric`` over the same users.

    Returns ``{"a", "b", "metric", "mean_a", "mean_b", "mean_diff", "ci_low", "ci_high", "p_value"}``.
    """
    from offline_eval.significance import paired_bootstrap

    if len(a.user_ids) != len(b.user_ids) or not np.array_equal(a.user_ids, b.user_ids):
        raise ValueError(f"compare: {a.name!r} and {b.name!r} were evaluated on different users")
    for s in (a, b):
        if metric not in s.per_user:
            raise ValueError(f"compare: metric {metric!r} not computed for {s.name!r}; have {list(s.per_user)}")
    res = paired_bootstrap(a.per_user[metric], b.per_user[metric], n_samples=n_samples, seed=seed)
    return {
        "a": a.name,
        "b": b.name,
        "metric": metric,
        "mean_a": a.means[metric],
        "mean_b": b.means[metric],
        **{k: (int(v) if isinstance(v, (int, np.integer)) else float(v)) for k, v in res.items()},
    }


#: a system named ``<parent><suffix>`` is an ablation of system ``<parent>`` and is compared with it
ABLATION_SUFFIXES = ("_no_graph",)


def _comparisons(evals: Mapping[str, SystemEval], baseline_names: Sequence[str], cfg: EvalConfig) -> list[dict]:
    """Each system vs the best baseline (by the primary metric); 'engine' vs every other system; a system vs its
    ablation (:data:`ABLATION_SUFFIXES`, e.g. ``prerank_only`` vs ``prerank_only_no_graph``)."""
    pairs: list[tuple[str, str]] = []
    n_users = min((len(e.user_ids) for e in evals.values()), default=0)
    if cfg.bootstrap_samples < 1 or n_users < 2:
        logger.warning("no significance tests (bootstrap_samples=%d, %d users)", cfg.bootstrap_samples, n_users)
        return []
    base = [n for n in baseline_names if n in evals]
    if base:
        best = max(base, key=lambda n: evals[n].means[PRIMARY_METRIC])
        pairs += [(n, best) for n in evals if n != best]
    if "engine" in evals:
        pairs += [("engine", n) for n in evals if n != "engine" and ("engine", n) not in pairs]
    ablated = [(n[: -len(sfx)], n) for n in evals for sfx in ABLATION_SUFFIXES
               if n.endswith(sfx) and n[: -len(sfx)] in evals and n[: -len(sfx)] != "engine"]
    pairs += ablated
    out = [compare(evals[a], evals[b], PRIMARY_METRIC, cfg.bootstrap_samples, cfg.seed) for a, b in pairs]
    true_metric = f"true_ndcg@{TRUE_VALUE_K}"
    if "engine" in evals and true_metric in evals["engine"].per_user:
        # synthetic worlds: the same comparisons of the engine (and of the ablation pairs) on the exposure-free
        # true-value metric
        out += [compare(evals[a], evals[b], true_metric, cfg.bootstrap_samples, cfg.seed)
                for a, b in pairs if a == "engine" or (a, b) in ablated]
    return out


def _failure(name: str, step: str, exc: BaseException) -> str:
    """The one-line reason a baseline failed (logged as an error; the report lists it under ``failed``)."""
    reason = f"{step} failed: {type(exc).__name__}: {' '.join(str(exc).split()) or 'no message'}"
    logger.error("baseline %s: %s; it is reported as failed, the other systems go on", name, reason)
    return reason


def eval_window(split: Split, window: str = "test") -> str:
    """``window`` when the split has it, else the split's last window."""
    return window if window in split.names else split.names[-1]


def run_evaluation(
    ds: Dataset,
    cfg: Config,
    out: str | Path,
    systems: Mapping[str, Ranker] | None = None,
    baselines: Sequence[str] | None = None,
    backend: Backend | str | None = None,
    ray_cfg: RayConfig | None = None,
    export_run: bool = False,
    overwrite: bool = False,
    extra: Mapping[str, Any] | None = None,
    catalog: Catalog | None = None,
    split: Split | None = None,
    reliability: Mapping[str, Any] | None = None,
    evals_out: dict | None = None,
) -> dict:
    """Split ``ds``, fit the baselines, evaluate every system (+ the oracle when the dataset has ground truth),
    compare them and write the report folder ``out``. Returns the ``metrics.json`` content.

    Args:
        systems: already built rankers by name (e.g. ``{"engine": engine}``); their item indices must be the
            catalogue's (pass the engine's ``catalog`` so both agree).
        baselines: baseline names to fit (default ``cfg.eval.baselines``); ``[]`` for none. Each is built with
            its ``cfg.eval.baseline_params``; one whose fit or evaluation raises is left out of the systems and
            listed in the report's ``failed`` section with the reason, and the others are reported.
        backend, ray_cfg: default ``cfg.eval.backend`` / ``cfg.ray``. A Ray runtime started here is stopped here.
        extra: more report sections, e.g. ``{"calibration": {task: {...}}}``.
        reliability: {name: bin table} drawn as ``reliability.png`` (see ``calibration.reliability_diagram``).
        catalog: the catalogue to evaluate in (default: items of ``ds``, users seen before the test window).
        split: a precomputed split of ``ds`` (default: ``split_dataset(ds, cfg.split)``).
        evals_out: when given, receives every system's :class:`SystemEval` (per-user metrics) by name.
    """
    from offline_eval import report as R

    out = Path(out)
    R.check_output(out, overwrite)
    backend = Backend(backend or cfg.eval.backend)
    ray_cfg = ray_cfg or cfg.ray
    split = split or split_dataset(ds, cfg.split)
    window = eval_window(split)
    before = split.before(window)
    catalog = catalog or Catalog.from_dataset(ds, train=before)
    data = EvalData.from_split(split, cfg.eval, catalog, window)

    all_systems: dict[str, Ranker] = {}
    fit_seconds: dict[str, float] = {}
    failed: dict[str, str] = {}  # baseline -> why it failed; the other systems are still evaluated and reported
    names = list(dict.fromkeys(cfg.eval.baselines if baselines is None else baselines))
    if names:
        from offline_eval.baselines import make_baseline

        models = {b: make_baseline(b, seed=cfg.seed, **cfg.eval.baseline_params.of(b)) for b in names}  # bad name
        for bname, model in models.items():
            t0 = time.perf_counter()
            try:
                model.fit(before, catalog, ds.schema)
            except Exception as exc:  # noqa: BLE001 -- one failing baseline must not lose the others' report
                failed[bname] = _failure(bname, "fit", exc)
                continue
            fit_seconds[bname] = time.perf_counter() - t0
            all_systems[bname] = model
            logger.info("fitted baseline %s in %.2f s", bname, fit_seconds[bname])
    for sname, system in (systems or {}).items():
        if sname in all_systems:
            raise ValueError(f"system name {sname!r} is used twice (a baseline has that name)")
        all_systems[sname] = system
    if ds.truth_dir is not None and "oracle" not in all_systems:
        try:
            from recsys.data.synthetic import Oracle
        except ImportError:
            logger.warning("dataset has ground truth but recsys.data.synthetic is unavailable; no oracle")
        else:
            all_systems["oracle"] = OracleSystem(Oracle.load(ds.truth_dir), catalog)

    started = backend is Backend.RAY and init_ray(ray_cfg)
    try:
        evals: dict[str, SystemEval] = {}
        for sname, system in all_systems.items():
            try:
                ev = evaluate(system, data, cfg.eval, backend, ray_cfg)
            except Exception as exc:  # noqa: BLE001
                if sname not in names:  # the engine and its ablations: a bug to surface, not to report
                    raise
                failed[sname] = _failure(sname, "evaluation", exc)
                continue
            ev.name = sname
            if sname in fit_seconds:
                ev.timings["fit_seconds"] = fit_seconds[sname]
            evals[sname] = ev
    finally:
        if started:
            shutdown()
    if isinstance(all_systems.get("oracle"), OracleSystem):
        add_true_value(evals, all_systems["oracle"], data)
    comparisons = _comparisons(evals, names, cfg.eval)
    if evals_out is not None:
        evals_out.update(evals)
    return R.write_report(
        out,
        evals,
        data,
        cfg,
        ds,
        comparisons=comparisons,
        baselines=names,
        split_stats=split.stats(),
        extra=extra,
        export_run=export_run,
        overwrite=overwrite,
        backend=backend.value,
        reliability=reliability,
        failed=failed,
    )


__all__ = [
    "EvalData",
    "SystemEval",
    "OracleSystem",
    "HEADLINE",
    "PRIMARY_METRIC",
    "evaluate",
    "compare",
    "run_evaluation",
    "metric_names",
    "beyond_k",
    "head_items",
    "set_recall",
    "restrict_columns",
]
