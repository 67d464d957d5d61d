"""Candidate sources and their merge.

Shapes: B requests, k candidates asked of a source, C merged candidates per request, N items, S sources.

Every source has one contract, ``source.candidates(requests, k) -> (items (B, k) int64, scores (B, k) float)``,
best first, ``-1`` / NaN padding, never returning an item of ``requests.exclude``. Any object with a ``name`` and
that method (e.g. a graph personalised-PageRank source) can be merged with the built-in ones:

* :class:`AnnSource`: two-tower user vector -> :class:`~recsys.retrieval.index.AnnIndex` inner-product search.
* :class:`PopularitySource`: the most engaged items of the training window (optionally only its last days);
  serves cold users and fills short lists.
* :class:`CollabSource`: an item-item model's (EASE or item-kNN, :mod:`recsys.collab`) top items for the history.

:func:`merge_candidates` combines the sources' lists into :class:`Candidates`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from recsys.collab import ItemItem
from recsys.retrieval.index import AnnIndex
from recsys.types import Ragged, Requests

logger = logging.getLogger(__name__)


@runtime_checkable
class CandidateSource(Protocol):
    name: str

    def candidates(self, requests: Requests, k: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclasses.dataclass
class Candidates:
    """Merged candidates of B requests.

    items   (B, C) int64 item indices, -1 = padding
    source  (B, C) int8 index into ``names`` of the source that contributed the item (-1 at padding)
    scores  {source name: (B, C) float32} the score each source gave the item, NaN where it did not return it
    names   the source names in priority order
    Within a row, candidates are ordered by merge pass (quota pass, then fill), then source priority, then
    the source's own rank.
    """

    items: np.ndarray
    source: np.ndarray
    scores: dict[str, np.ndarray]
    names: list[str]

    def __len__(self) -> int:
        return len(self.items)

    def take(self, rows: np.ndarray) -> "Candidates":
        return Candidates(self.items[rows], self.source[rows], {k: v[rows] for k, v in self.scores.items()},
                          list(self.names))

    def counts(self) -> dict[str, int]:
        """Total candidates contributed by each source over the batch."""
        return {name: int((self.source == j).sum()) for j, name in enumerate(self.names)}


# ------------------------------------------------------------------------------------------------------------
# Vectorized row-wise helpers. Membership tests sort int64 pair keys (row * (n + 1) + item) and use
# searchsorted: numpy 2.4's hash-based np.unique / np.isin defaults are far slower on millions of keys.
# ------------------------------------------------------------------------------------------------------------


def _pair_keys(items: np.ndarray, n: int) -> np.ndarray:
    """(B, C) -> (B, C) int64 keys row * (n + 1) + item, unique per (row, item) for 0 <= item <= n."""
    b = items.shape[0]
    return np.arange(b, dtype=np.int64)[:, None] * (n + 1) + items


def _ragged_keys(r: Ragged, n: int) -> np.ndarray:
    rows = np.repeat(np.arange(len(r), dtype=np.int64), r.lengths())
    ok = (r.values >= 0) & (r.values <= n)
    return rows[ok] * (n + 1) + r.values[ok]


def sorted_member(keys: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Boolean array shaped like ``keys``: True where the key is in ``sorted_set`` (1-d, ascending)."""
    if len(sorted_set) == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.searchsorted(sorted_set, keys)
    return sorted_set[np.minimum(pos, len(sorted_set) - 1)] == keys


def exclusion_mask(items: np.ndarray, exclude: Ragged | None, n: int | None = None) -> np.ndarray:
    """(B, C) bool: True where items[b, c] is in row b of ``exclude``."""
    if exclude is None or len(exclude.values) == 0 or items.size == 0:
        return np.zeros(items.shape, dtype=bool)
    if len(exclude) != len(items):
        raise ValueError(f"exclude has {len(exclude)} rows for {len(items)} requests")
    if n is None:
        n = int(max(items.max(initial=0), exclude.values.max(initial=0))) + 1
    keys = _pair_keys(np.clip(items, 0, n), n)
    return sorted_member(keys, np.sort(_ragged_keys(exclude, n))) & (items >= 0)


def compact(items: np.ndarray, scores: np.ndarray, drop: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove the ``drop`` (B, C) entries (and -1 padding) keeping order; return the first k per row,
    padded with -1 / NaN."""
    drop = drop | (items < 0)
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]
    out_i = np.take_along_axis(items, order, axis=1)
    out_s = np.take_along_axis(scores.astype(np.float32, copy=False), order, axis=1)
    dropped = np.take_along_axis(drop, order, axis=1)
    out_i = np.where(dropped, -1, out_i)
    out_s = np.where(dropped, np.nan, out_s).astype(np.float32)
    if out_i.shape[1] < k:
        pad = k - out_i.shape[1]
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
        out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=np.nan)
    return out_i.astype(np.int64), out_s


def first_occurrence(items: np.ndarray) -> np.ndarray:
    """(B, C) bool: True at the first (leftmost) occurrence of each valid (>= 0) item in its row.
    One stable row-wise argsort; O(B C log C)."""
    if items.size == 0:
        return np.zeros(items.shape, dtype=bool)
    big = np.iinfo(np.int64).max
    key = np.where(items >= 0, items, big)
    order = np.argsort(key, axis=1, kind="stable")
    s = np.take_along_axis(key, order, axis=1)
    first_sorted = np.ones(s.shape, dtype=bool)
    first_sorted[:, 1:] = s[:, 1:] != s[:, :-1]
    first_sorted &= s != big
    out = np.zeros(items.shape, dtype=bool)
    np.put_along_axis(out, order, first_sorted, axis=1)
    return out


def fetch_width(k: int, exclude: Ragged | None, n: int) -> int:
    """How many items to ask an index for so that ~k survive exclusion: k + the longest exclusion row
    (capped at k, so at most 2k), at most N."""
    extra = 0 if exclude is None or len(exclude) == 0 else int(min(exclude.lengths().max(initial=0), k))
    return int(min(n, k + extra))


def cold_rows(requests: Requests, user_oov: int) -> np.ndarray:
    """(B,) bool: requests of users unknown at training (OOV id) with an empty history."""
    return (requests.users >= user_oov) & (requests.history.lengths() == 0)


# ------------------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------------------


class PopularitySource:
    """The N items ranked by engagement count (ties: lower index first); score = count."""

    def __init__(self, counts: np.ndarray, name: str = "popularity") -> None:
        counts = np.asarray(counts, dtype=np.float64)
        if counts.ndim != 1:
            raise ValueError(f"PopularitySource: counts must be (N,), got shape {counts.shape}")
        self.name = name
        self.counts = counts
        self.ranked = np.argsort(-counts, kind="stable").astype(np.int64)
        self.ranked_scores = counts[self.ranked].astype(np.float32)

    @classmethod
    def from_events(
        cls, items: np.ndarray, times: np.ndarray, n_items: int, window_seconds: float | None = None,
        name: str = "popularity",
    ) -> "PopularitySource":
        """Counts of engagement events (items (R,), times (R,)); with ``window_seconds`` only those within
        that long before the last event (a recency window)."""
        items = np.asarray(items, dtype=np.int64)
        times = np.asarray(times, dtype=np.int64)
        keep = (items >= 0) & (items < n_items)
        if window_seconds is not None and window_seconds > 0 and len(times):
            keep &= times >= times.max() - window_seconds
        return cls(np.bincount(items[keep], minlength=n_items)[:n_items].astype(np.float64), name)

    def candidates(self, requests: Requests, k: int) -> tuple[np.ndarray, np.ndarray]:
        b, n = len(requests), len(self.ranked)
        width = fetch_width(k, requests.exclude, n)
        items = np.broadcast_to(self.ranked[:width], (b, width))
        scores = np.broadcast_to(self.ranked_scores[:width], (b, width))
        return compact(items, scores, exclusion_mask(items, requests.exclude, n), k)


class CollabSource:
    """Item-item candidates: each request's k best items by ``s(u, c) = sum_{h in distinct history} W[h, c]``
    (:class:`recsys.collab.ItemItem`), positive scores only (ties: lower index), never an item of
    ``requests.exclude``. A request without known history items gets none (-1 / NaN), left to other sources.

    Cost per request O(|history| K) for K weights per row of W, whatever the catalogue size: one sparse product
    for the batch, then per row a partition to the k-th score and an exact sort of what reaches it; a row never
    depends on the others.
    """

    def __init__(self, model: ItemItem, name: str = "collab") -> None:
        if not isinstance(model, ItemItem) or model.weights is None:
            raise TypeError("CollabSource: needs a fitted recsys.collab.ItemItem")
        self.name = name
        self.model = model

    @property
    def n_items(self) -> int:
        return self.model.n_items

    def candidates(self, requests: Requests, k: int) -> tuple[np.ndarray, np.ndarray]:
        b, n = len(requests), self.model.n_items
        items = np.full((b, k), -1, dtype=np.int64)
        scores = np.full((b, k), np.nan, dtype=np.float32)
        if b == 0 or k == 0:
            return items, scores
        s = self.model.scores(requests.history)
        s.sum_duplicates()  # also sorts each row's columns
        r = np.repeat(np.arange(b, dtype=np.int64), np.diff(s.indptr))
        c, v = s.indices.astype(np.int64), s.data
        keep = v > 0
        if requests.exclude is not None and len(requests.exclude.values):
            keep &= ~sorted_member(r * (n + 1) + c, np.sort(_ragged_keys(requests.exclude, n)))
        bounds = np.r_[0, np.cumsum(np.bincount(r[keep], minlength=b))]
        c, v = c[keep], v[keep]
        for row in range(b):  # per row: a linear-time partition to the k-th value, then an exact sort of those
            lo, hi = bounds[row], bounds[row + 1]
            rc, rv = c[lo:hi], v[lo:hi]
            if hi - lo > k:
                kth = -np.partition(-rv, k - 1)[k - 1]
                rc, rv = rc[rv >= kth], rv[rv >= kth]  # every tie of the k-th value, cut below by column
            order = np.lexsort((rc, -rv))[:k]
            items[row, :len(order)], scores[row, :len(order)] = rc[order], rv[order]
        return items, scores


class AnnSource:
    """Two-tower retrieval: ``encode(requests) -> (B, D)`` user vectors searched in ``index``.

    Rows flagged by ``is_cold`` (default: none) get no ANN candidates (-1), left to other sources.
    """

    def __init__(
        self,
        index: AnnIndex,
        encode: Callable[[Requests], np.ndarray],
        is_cold: Callable[[Requests], np.ndarray] | None = None,
        name: str = "ann",
    ) -> None:
        self.name = name
        self.index = index
        self.encode = encode
        self.is_cold = is_cold

    def candidates(self, requests: Requests, k: int) -> tuple[np.ndarray, np.ndarray]:
        b = len(requests)
        items = np.full((b, k), -1, dtype=np.int64)
        scores = np.full((b, k), np.nan, dtype=np.float32)
        warm = np.ones(b, bool) if self.is_cold is None else ~np.asarray(self.is_cold(requests), bool)
        rows = np.flatnonzero(warm)
        if len(rows) == 0 or k == 0:
            return items, scores
        sub = requests if len(rows) == b else requests.take(rows)
        vectors = self.encode(sub)
        width = fetch_width(k, sub.exclude, self.index.ntotal)
        ids, sc = self.index.search(vectors, width)
        ids, sc = compact(ids, sc, exclusion_mask(ids, sub.exclude, self.index.ntotal), k)
        items[rows], scores[rows] = ids, sc
        return items, scores


# ------------------------------------------------------------------------------------------------------------
# Merge
# ------------------------------------------------------------------------------------------------------------


def _lookup(items: np.ndarray, src_items: np.ndarray, src_scores: np.ndarray, n: int) -> np.ndarray:
    """(B, C) float32: the score src gave items[b, c] in row b (at its first occurrence), NaN if absent."""
    out = np.full(items.shape, np.nan, dtype=np.float32)
    first = first_occurrence(src_items)
    keys = _pair_keys(np.clip(src_items, 0, n), n)[first]
    if len(keys) == 0:
        return out
    vals = np.asarray(src_scores, dtype=np.float32)[first]
    order = np.argsort(keys, kind="stable")
    keys, vals = keys[order], vals[order]
    q = _pair_keys(np.clip(items, 0, n), n)
    pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
    hit = (keys[pos] == q) & (items >= 0)
    out[hit] = vals[pos[hit]]
    return out


def merge_candidates(
    source_outputs: dict[str, tuple[np.ndarray, np.ndarray]],
    quotas: dict[str, int],
    k: int,
    exclude: Ragged | None = None,
) -> Candidates:
    """Merge S sources' (items (B, k_s), scores (B, k_s)) into at most k candidates per request.

    Priority is the order of ``source_outputs``. De-duplication: an item belongs to the first source in
    priority order that returned it (its score from every source that returned it is kept in
    ``Candidates.scores``). Pass 1: each source, in priority order, contributes its best own items up to
    ``quotas[name]`` (absent: 0) and the slots left. Pass 2 (fill): the remaining items in priority order
    (source, then the source's rank) until k. Items of ``exclude`` rows and -1 padding are never taken.
    Vectorized over the batch: one row-wise sort of the concatenated lists, cumulative sums per source.
    Returns C = k columns, -1 padded.
    """
    names = list(source_outputs)
    if not names:
        raise ValueError("merge_candidates: no sources given")
    unknown = sorted(set(quotas) - set(names))
    if unknown:
        raise ValueError(f"merge_candidates: quotas name unknown source(s) {unknown}; sources: {names}")
    if any(int(q) < 0 for q in quotas.values()):
        raise ValueError(f"merge_candidates: quotas must be >= 0, got {quotas}")
    if k < 0:
        raise ValueError(f"merge_candidates: k must be >= 0, got {k}")
    if len(names) > 127:
        raise ValueError("merge_candidates: at most 127 sources (int8 source index)")
    outs = {}
    b = None
    for name in names:
        items, scores = source_outputs[name]
        items = np.asarray(items, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        if items.ndim != 2 or items.shape != scores.shape:
            raise ValueError(f"merge_candidates: source {name!r}: items and scores must be equal (B, k) arrays")
        if b is None:
            b = items.shape[0]
        elif items.shape[0] != b:
            raise ValueError(f"merge_candidates: source {name!r} has {items.shape[0]} rows, expected {b}")
        outs[name] = (items, scores)
    assert b is not None
    if exclude is not None and len(exclude) != b:
        raise ValueError(f"merge_candidates: exclude has {len(exclude)} rows for {b} requests")

    all_items = np.concatenate([outs[name][0] for name in names], axis=1)  # (B, T) in priority order
    widths = [outs[name][0].shape[1] for name in names]
    bounds = np.r_[0, np.cumsum(widths)]
    n = int(all_items.max(initial=-1))
    if exclude is not None and len(exclude.values):
        n = max(n, int(exclude.values.max()))
    n += 1
    owned = first_occurrence(all_items) & ~exclusion_mask(all_items, exclude, n)

    out_items = np.full((b, k), -1, dtype=np.int64)
    out_src = np.full((b, k), -1, dtype=np.int8)
    count = np.zeros(b, dtype=np.int64)
    col_src = np.repeat(np.arange(len(names), dtype=np.int8), widths)

    def place(sel: np.ndarray, rank: np.ndarray, lo: int) -> None:
        rows, cols = np.nonzero(sel)
        pos = count[rows] + rank[rows, cols] - 1
        out_items[rows, pos] = all_items[rows, lo + cols]
        out_src[rows, pos] = col_src[lo + cols]
        count[:] += sel.sum(axis=1)

    taken = np.zeros(all_items.shape, dtype=bool)
    for j, name in enumerate(names):  # pass 1: quotas
        lo, hi = bounds[j], bounds[j + 1]
        limit = np.minimum(int(quotas.get(name, 0)), k - count)
        avail = owned[:, lo:hi]
        rank = np.cumsum(avail, axis=1)
        sel = avail & (rank <= limit[:, None])
        taken[:, lo:hi] = sel
        place(sel, rank, lo)
    avail = owned & ~taken  # pass 2: fill in priority order
    rank = np.cumsum(avail, axis=1)
    sel = avail & (rank <= (k - count)[:, None])
    place(sel, rank, 0)

    scores = {name: _lookup(out_items, *outs[name], n) for name in names}
    return Candidates(out_items, out_src, scores, names)


def select_columns(cands: Candidates, cols: np.ndarray) -> Candidates:
    """The candidates at column positions ``cols`` (B, C') of each row (``-1`` -> padding)."""
    valid = cols >= 0
    safe = np.where(valid, cols, 0)
    items = np.where(valid, np.take_along_axis(cands.items, safe, axis=1), -1)
    source = np.where(valid, np.take_along_axis(cands.source, safe, axis=1), -1).astype(cands.source.dtype)
    scores = {
        k: np.where(valid, np.take_along_axis(v, safe, axis=1), np.nan).astype(v.dtype, copy=False)
        for k, v in cands.scores.items()
    }
    return Candidates(items, source, scores, list(cands.names))


def top_columns(score: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Column positions (B, k) of the k best scores per row, best first; padding and NaN never kept (-1).

    Ties keep the upstream order (stable sort on the column position).
    """
    s = np.where((items >= 0) & np.isfinite(score), score, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(s, order, axis=1)
    order = np.where(np.isneginf(picked), -1, order)
    if order.shape[1] < k:
        order = np.pad(order, ((0, 0), (0, k - order.shape[1])), constant_values=-1)
    return order
