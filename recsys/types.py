"""The shared ranking contract: a batch of requests in, ranked lists with per-stage scores out.

Shapes used throughout the engine:
    B  requests (users) in a batch
    N  items in the catalogue (item indices ``0..N-1`` of the catalogue's item :class:`~recsys.data.vocab.Vocab`)
    C  candidates per request at a stage
    K  items returned per request

Every system that ranks (baselines, the engine, each engine stage alone) implements :class:`Ranker`:
``rank(requests, k) -> Results``. The offline evaluator and the HTTP service call this same method.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import numpy as np


MISSING_TIME = np.iinfo(np.int64).min  # Ragged.times of an event whose time is unknown (e.g. a served history)


@dataclasses.dataclass
class Ragged:
    """B variable-length rows stored flat (CSR-style): row b is ``values[indptr[b]:indptr[b+1]]``.

    ``values`` (nnz,) int64 item indices; ``times`` (nnz,) int64 Unix seconds or None; an entry whose time is
    unknown holds :data:`MISSING_TIME`. Rows are in time order (oldest first) when they hold a history.
    """

    indptr: np.ndarray
    values: np.ndarray
    times: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.indptr = np.asarray(self.indptr, dtype=np.int64)
        self.values = np.asarray(self.values, dtype=np.int64)
        if self.times is not None:
            self.times = np.asarray(self.times, dtype=np.int64)
        assert self.indptr.ndim == 1 and self.indptr[0] == 0 and self.indptr[-1] == len(self.values)

    @classmethod
    def empty(cls, n_rows: int) -> "Ragged":
        return cls(np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @classmethod
    def from_lists(cls, rows: list, times: list | None = None) -> "Ragged":
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        indptr = np.r_[0, np.cumsum(lengths)]
        values = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
        t = None
        if times is not None:
            t = np.concatenate([np.asarray(r, dtype=np.int64) for r in times]) if rows else np.zeros(0, np.int64)
        return cls(indptr, values.astype(np.int64), t)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row(self, b: int) -> np.ndarray:
        return self.values[self.indptr[b] : self.indptr[b + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def take(self, rows: np.ndarray) -> "Ragged":
        """The sub-batch of ``rows`` (B',) as a new Ragged (vectorized gather)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lens = ends - starts
        indptr = np.r_[0, np.cumsum(lens)].astype(np.int64)
        idx = np.repeat(starts - indptr[:-1], lens) + np.arange(indptr[-1])
        return Ragged(indptr, self.values[idx], None if self.times is None else self.times[idx])

    def last(self, n: int) -> "Ragged":
        """Each row's last ``n`` entries (the most recent, when rows are time-ordered)."""
        lens = self.lengths()
        keep = np.minimum(lens, n)
        indptr = np.r_[0, np.cumsum(keep)].astype(np.int64)
        starts = self.indptr[1:] - keep
        idx = np.repeat(starts - indptr[:-1], keep) + np.arange(indptr[-1])
        return Ragged(indptr, self.values[idx], None if self.times is None else self.times[idx])

    def to_csr(self, n_cols: int):
        """(B, n_cols) scipy.sparse.csr_matrix with ones at the row entries (duplicates summed)."""
        import scipy.sparse as sp

        m = sp.csr_matrix(
            (np.ones(len(self.values), dtype=np.float32), self.values, self.indptr), shape=(len(self), n_cols)
        )
        m.sum_duplicates()
        return m

    @staticmethod
    def concat(parts: list["Ragged"]) -> "Ragged":
        indptr = [np.zeros(1, dtype=np.int64)]
        offset = 0
        for p in parts:
            indptr.append(p.indptr[1:] + offset)
            offset += len(p.values)
        times = None
        if parts and all(p.times is not None for p in parts):
            times = np.concatenate([p.times for p in parts])
        values = np.concatenate([p.values for p in parts]) if parts else np.zeros(0, np.int64)
        return Ragged(np.concatenate(indptr), values, times)


@dataclasses.dataclass
class Requests:
    """A batch of B ranking requests, in catalogue indices.

    users       (B,) int64 user index in the catalogue's user vocab; ``catalog.users.oov`` for unknown users
    timestamps  (B,) int64 request time (Unix seconds)
    history     B rows of the user's engaged item indices before the request, oldest first (with times)
    exclude     B rows of item indices never to return (e.g. already engaged), or None
    context     {column: (B,) array} request context (e.g. hour, device), possibly empty
    user_ids    (B,) external user ids (for logging, features of users unseen at training), or None
    """

    users: np.ndarray
    timestamps: np.ndarray
    history: Ragged
    exclude: Ragged | None = None
    context: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    user_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.users = np.asarray(self.users, dtype=np.int64)
        self.timestamps = np.asarray(self.timestamps, dtype=np.int64)
        b = len(self.users)
        if len(self.timestamps) != b or len(self.history) != b or (self.exclude is not None and len(self.exclude) != b):
            raise ValueError(
                f"Requests: users ({b}), timestamps ({len(self.timestamps)}), history ({len(self.history)}) and "
                f"exclude must all have one entry per request"
            )
        for k, v in self.context.items():
            if len(v) != b:
                raise ValueError(f"Requests: context {k!r} has {len(v)} values for {b} requests")

    def __len__(self) -> int:
        return len(self.users)

    def take(self, rows: np.ndarray) -> "Requests":
        rows = np.asarray(rows, dtype=np.int64)
        return Requests(
            users=self.users[rows],
            timestamps=self.timestamps[rows],
            history=self.history.take(rows),
            exclude=None if self.exclude is None else self.exclude.take(rows),
            context={k: np.asarray(v)[rows] for k, v in self.context.items()},
            user_ids=None if self.user_ids is None else np.asarray(self.user_ids)[rows],
        )

    @staticmethod
    def concat(parts: list["Requests"]) -> "Requests":
        """The requests of ``parts`` one after another (the same context columns in each; ``exclude`` and
        ``user_ids`` kept when every part has them)."""
        keys = set(parts[0].context)
        if any(set(p.context) != keys for p in parts):
            raise ValueError(f"Requests.concat: parts have different context columns {[sorted(p.context) for p in parts]}")
        excl = [p.exclude for p in parts]
        ids = [p.user_ids for p in parts]
        return Requests(
            users=np.concatenate([p.users for p in parts]),
            timestamps=np.concatenate([p.timestamps for p in parts]),
            history=Ragged.concat([p.history for p in parts]),
            exclude=None if any(e is None for e in excl) else Ragged.concat(excl),
            context={k: np.concatenate([np.asarray(p.context[k]) for p in parts]) for k in parts[0].context},
            user_ids=None if any(u is None for u in ids) else np.concatenate([np.asarray(u) for u in ids]),
        )

    def shards(self, size: int):
        """Yield consecutive sub-batches of at most ``size`` requests."""
        for start in range(0, len(self), size):
            yield self.take(np.arange(start, min(start + size, len(self))))


@dataclasses.dataclass
class Results:
    """Ranked lists for a batch of B requests.

    items         (B, K) int64 catalogue item indices in rank order, -1 = padding (fewer than K available)
    scores        (B, K) float64 final score of each item (NaN at padding)
    stage_scores  {stage or task name: (B, K)} the score each stage/task gave the returned items
    stages        {stage name: (B, C_stage) int64} the candidate list that stage passed on (funnel recall)
    degraded      per request, the list of degradations that applied (e.g. "cold_start")
    """

    items: np.ndarray
    scores: np.ndarray
    stage_scores: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    stages: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    degraded: list[list[str]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.degraded:
            self.degraded = [[] for _ in range(len(self.items))]

    @staticmethod
    def concat(parts: list["Results"]) -> "Results":
        """Stack the results of consecutive shards (pads K and stage widths with -1 / NaN as needed)."""

        def stack(arrs: list[np.ndarray], fill) -> np.ndarray:
            width = max(a.shape[1] for a in arrs)
            out = [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill) for a in arrs]
            return np.concatenate(out, axis=0)

        keys_s = set.intersection(*(set(p.stage_scores) for p in parts)) if parts else set()
        keys_c = set.intersection(*(set(p.stages) for p in parts)) if parts else set()
        return Results(
            items=stack([p.items for p in parts], -1),
            scores=stack([p.scores.astype(np.float64) for p in parts], np.nan),
            stage_scores={k: stack([p.stage_scores[k].astype(np.float64) for p in parts], np.nan) for k in keys_s},
            stages={k: stack([p.stages[k] for p in parts], -1) for k in keys_c},
            degraded=[d for p in parts for d in p.degraded],
        )


@runtime_checkable
class Ranker(Protocol):
    """Anything that ranks the catalogue for a batch of requests (baselines, the engine, a stage alone)."""

    name: str

    def rank(self, requests: Requests, k: int) -> Results: ...


def top_k(scores: np.ndarray, k: int, exclude: Ragged | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` columns of a (B, N) score matrix, highest first, ties broken by lower index.

    Excluded items and ``-inf`` scores are never returned; rows with fewer than k eligible items are padded
    with index -1 and score NaN. Returns (items (B, k) int64, scores (B, k) float64). O(B N) via argpartition.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    b, n = scores.shape
    if exclude is not None and len(exclude.values):
        rows = np.repeat(np.arange(b), exclude.lengths())
        ok = (exclude.values >= 0) & (exclude.values < n)
        scores[rows[ok], exclude.values[ok]] = -np.inf
    kk = min(k, n)
    if kk < n:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    else:
        part = np.broadcast_to(np.arange(n), (b, n)).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    items = np.take_along_axis(part, order, axis=1).astype(np.int64)
    vals = np.take_along_axis(part_scores, order, axis=1)
    if kk < n:
        # argpartition picks arbitrarily among items tied with the k-th score; redo those rows exactly
        # (stable sort: ties broken by lower index) so the result never depends on partition internals.
        thresh = vals[:, -1:]
        n_tied_all = (scores == thresh).sum(axis=1)
        n_tied_kept = (vals == thresh).sum(axis=1)
        redo = np.flatnonzero(n_tied_all > n_tied_kept)
        if len(redo):
            sub = scores[redo]
            idx = np.argsort(-sub, axis=1, kind="stable")[:, :kk]
            items[redo] = idx
            vals[redo] = np.take_along_axis(sub, idx, axis=1)
    bad = np.isnan(vals) | (np.isinf(vals) & (vals < 0))
    items[bad] = -1
    vals[bad] = np.nan
    if kk < k:
        items = np.pad(items, ((0, 0), (0, k - kk)), constant_values=-1)
        vals = np.pad(vals, ((0, 0), (0, k - kk)), constant_values=np.nan)
    return items, vals
