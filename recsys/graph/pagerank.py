"""PageRank, batched personalized PageRank (power iteration and forward push), and the graph candidate source.

Shapes: N nodes (items), B seed sets (users / requests), k items returned per request.

PageRank (Page, Brin, Motwani & Winograd 1999) of a weighted directed graph with adjacency ``A`` (N, N),
``A[u, v]`` the weight of edge u -> v, with exactly the semantics of ``networkx.pagerank`` (3.x, the scipy
implementation ``_pagerank_scipy``)::

    P = D^-1 A                         row-normalised out-weights (D = diag of row sums)
    x_0 = 1/N                           uniform start
    x_{t+1} = alpha (x_t P + (sum_{u dangling} x_t[u]) d) + (1 - alpha) p
    stop at the first t with ||x_{t+1} - x_t||_1 < N * tol, return x_{t+1}

``p`` is the personalization (restart) distribution (default uniform) and ``d`` the distribution that the
mass of dangling nodes (zero out-weight) jumps to (default ``p``); both are normalised to sum 1. No final
renormalisation is applied (networkx applies none either). Non-convergence within ``max_iter`` raises
:class:`PageRankConvergenceError` (as networkx raises ``PowerIterationFailedConvergence``).

Personalized PageRank (PPR) of a seed set is the same vector with ``p`` = the seed distribution (uniform over
the seed entries, or weighted) and ``d = p`` (networkx's default when ``dangling`` is not given). Two methods:

* ``power``: the iteration above in matrix form for B users at once, ``X <- alpha (X P + m d) + (1 - alpha) R``
  with X, R (B, N) dense; each row stops at its own convergence check (networkx's, ``N * tol``). It starts
  from ``X_0 = R`` rather than networkx's uniform vector, so items not reachable from the seeds get exactly 0
  (uniform start leaves ~alpha^t residue there); both stop within ``alpha / (1 - alpha) * N * tol`` (L1) of
  the same fixed point, so each row agrees with ``networkx.pagerank(G, personalization=row)`` to that
  tolerance. Memory O(B N): for moderate N.
* ``push``: forward push (Andersen, Chung & Lang 2006, "Local graph partitioning using PageRank vectors",
  FOCS; Algorithm "ApproximatePageRank", non-lazy variant as in Lofgren et al.'s FAST-PPR). Keeps an estimate
  ``q`` and a residual ``r`` (initially the seed distribution) with the invariant ``ppr(s) = q + ppr_s(r)``,
  where ``ppr_s(r)`` is the PPR with restart ``r`` and dangling distribution ``s``. Pushing node u moves
  ``(1 - alpha) r[u]`` into ``q[u]`` and spreads ``alpha r[u]`` over u's out-edges (to ``s`` when u is
  dangling). Nodes are pushed while ``r[u] > eps * max(outdeg(u), 1)``. On exit
  ``0 <= ppr(s) - q`` entrywise and ``||ppr(s) - q||_1 = sum(r) <= eps * sum_u max(outdeg(u), 1)``; every
  pushed node settles at least ``(1 - alpha) eps`` of mass, so there are at most ``1 / ((1 - alpha) eps)``
  pushes, independent of N. Here all nodes above threshold are pushed at once per round (a synchronous
  frontier, vectorized with numpy); the invariant holds for any push order. Returns a sparse (B, N) matrix.

Rows with no seeds (empty history, or all seed weights 0) fall back to the global PageRank (uniform
personalization); with ``push`` that row holds the global PageRank's entries >= ``eps`` (so it stays sparse).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recsys.configlib import ConfigError, from_dict, to_dict
from recsys.graph.item_graph import GraphConfig, build_item_graph, load_graph, save_graph
from recsys.io import write_json
from recsys.types import Ragged, Requests, top_k

logger = logging.getLogger(__name__)

# Largest dense (N, B_chunk) block the batched power iteration holds per array (float64 elements).
_POWER_BLOCK_ELEMENTS = 1 << 22
# Largest flat (B_chunk * N,) state the batched forward push holds per array (float64 elements): 8 MB, so
# the random reads and writes stay in cache (4x the size was 2x slower on a 5k-item graph).
_PUSH_BLOCK_ELEMENTS = 1 << 20


class PageRankConvergenceError(RuntimeError):
    """The power iteration did not reach ``N * tol`` within ``max_iter`` iterations."""

    def __init__(self, max_iter: int, err: float, threshold: float) -> None:
        super().__init__(
            f"PageRank did not converge in max_iter={max_iter} iterations (L1 change {err:.3g} >= N * tol = "
            f"{threshold:.3g}); raise max_iter or tol"
        )
        self.max_iter = max_iter
        self.err = err


class PPRMethod(str, enum.Enum):
    POWER = "power"  # dense (B, N) power iteration, exact to tol; moderate N
    PUSH = "push"  # forward push, sparse, local work ~ 1 / ((1 - alpha) eps); large N


# ------------------------------------------------------------------------------------------------------
# The random walk of a graph
# ------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Transition:
    """The random walk of an (N, N) weighted adjacency, precomputed once and shared by every PageRank call.

    p          (N, N) csr float64, ``P = D^-1 A`` (row u: u's out-edges, summing to 1; empty when dangling)
    pt         (N, N) csr float64, ``P^T`` (row v: v's in-edges), for the gather-style product ``x P = P^T x``
    dangling   (N,) bool, out-weight 0
    out_degree (N,) int64, number of out-edges with positive weight
    """

    p: sp.csr_matrix
    pt: sp.csr_matrix
    dangling: np.ndarray
    out_degree: np.ndarray

    @property
    def n(self) -> int:
        return self.p.shape[0]

    @classmethod
    def from_adjacency(cls, adj) -> "Transition":
        if isinstance(adj, Transition):
            return adj
        if not (sp.issparse(adj) or isinstance(adj, np.ndarray)):
            raise TypeError(f"adjacency must be a scipy.sparse matrix or a numpy array, got {type(adj).__name__}")
        a = sp.csr_matrix(adj, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(f"adjacency must be square (N, N), got shape {a.shape}")
        a.sum_duplicates()
        if a.nnz and not np.isfinite(a.data).all():
            raise ValueError("adjacency: edge weights must be finite")
        if a.nnz and (a.data < 0).any():
            raise ValueError("adjacency: edge weights must be >= 0 (PageRank needs a non-negative walk)")
        a.eliminate_zeros()
        a.sort_indices()
        n = a.shape[0]
        out_w = np.asarray(a.sum(axis=1)).ravel()
        inv = np.zeros(n)
        np.divide(1.0, out_w, out=inv, where=out_w > 0)
        p = a.copy()
        p.data *= np.repeat(inv, np.diff(p.indptr))
        pt = sp.csr_matrix(p.T)
        pt.sort_indices()
        return cls(p=p, pt=pt, dangling=out_w == 0, out_degree=np.diff(a.indptr).astype(np.int64))


def _distribution(name: str, v, n: int) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"pagerank: {name} must have shape (N,) = ({n},), got {arr.shape}")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"pagerank: {name} must be finite and >= 0")
    total = arr.sum()
    if total <= 0:
        raise ValueError(f"pagerank: {name} must have a positive sum (at least one node with weight > 0)")
    return arr / total


def _check_params(damping: float, tol: float, max_iter: int) -> None:
    if not (0.0 <= damping < 1.0):
        raise ValueError(f"pagerank: damping must be in [0, 1), got {damping}")
    if not tol > 0:
        raise ValueError(f"pagerank: tol must be > 0, got {tol}")
    if max_iter < 1:
        raise ValueError(f"pagerank: max_iter must be >= 1, got {max_iter}")


def _power(
    t: Transition,
    restart: np.ndarray,
    dangling_to: np.ndarray | None,
    damping: float,
    tol: float,
    max_iter: int,
    start_at_restart: bool = False,
) -> np.ndarray:
    """Power iteration for the B columns of ``restart`` (N, B) at once; each column stops at its own
    convergence. ``dangling_to`` (N, B) or (N, 1), or None for "same as restart". Starts from the uniform
    vector (networkx's default) or, with ``start_at_restart``, from ``restart``. Returns (N, B)."""
    n, b = restart.shape
    out = np.empty((n, b))
    x = restart.copy() if start_at_restart else np.full((n, b), 1.0 / n)
    active = np.arange(b)
    r, d = restart, (restart if dangling_to is None else dangling_to)
    dang = np.flatnonzero(t.dangling)
    threshold = n * tol
    err = np.full(b, np.inf)
    for it in range(1, max_iter + 1):
        mass = x[dang].sum(axis=0) if len(dang) else np.zeros(len(active))  # (B_active,)
        x_new = t.pt @ x
        x_new += d * mass
        x_new *= damping
        x_new += (1.0 - damping) * r
        err = np.abs(x_new - x).sum(axis=0)
        done = err < threshold
        if done.any():
            out[:, active[done]] = x_new[:, done]
            keep = ~done
            active = active[keep]
            if not len(active):
                logger.debug("power iteration: %d column(s) converged after %d iterations", b, it)
                return out
            x_new = x_new[:, keep]
            r = r[:, keep]
            d = d[:, keep] if d.shape[1] > 1 else d
            err = err[keep]
        x = x_new
    raise PageRankConvergenceError(max_iter, float(err.max()), threshold)


# ------------------------------------------------------------------------------------------------------
# Global PageRank
# ------------------------------------------------------------------------------------------------------


def pagerank(
    adj,
    damping: float = 0.85,
    tol: float = 1e-10,
    max_iter: int = 200,
    personalization: np.ndarray | None = None,
    dangling: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) float64 PageRank of ``adj`` (N, N) (scipy.sparse, numpy array, or a :class:`Transition`).

    Same result as ``networkx.pagerank(G, alpha=damping, personalization, max_iter, tol, weight='weight',
    dangling)`` for the DiGraph with these weighted edges (see the module docstring for the formula).
    ``personalization`` and ``dangling`` are (N,) non-negative arrays (normalised here). A graph without
    edges gives the personalization vector (uniform by default). Raises :class:`PageRankConvergenceError`
    when not converged after ``max_iter`` iterations. Cost: O(nnz) per iteration.
    """
    _check_params(damping, tol, max_iter)
    t = Transition.from_adjacency(adj)
    n = t.n
    if n == 0:
        return np.zeros(0)
    p = np.full(n, 1.0 / n) if personalization is None else _distribution("personalization", personalization, n)
    d = None if dangling is None else _distribution("dangling", dangling, n)[:, None]
    return _power(t, p[:, None], d, damping, tol, max_iter)[:, 0]


# ------------------------------------------------------------------------------------------------------
# Personalized PageRank
# ------------------------------------------------------------------------------------------------------


def recency_weights(history: Ragged, half_life: float) -> np.ndarray:
    """(nnz,) seed weights ``0.5 ** (age / half_life)``, age = 0 for a row's last (most recent) entry, 1 for the
    one before, ... (rows oldest first, as :class:`~recsys.types.Ragged` histories are)."""
    if not half_life > 0:
        raise ValueError(f"recency_weights: half_life must be > 0, got {half_life}")
    lens = history.lengths()
    rows = np.repeat(np.arange(len(lens)), lens)
    age = history.indptr[rows + 1] - 1 - np.arange(len(history.values))
    return np.exp2(-age / float(half_life))


def _seed_rows(seeds: Ragged, seed_weights: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (row (nnz,), item (nnz,), weight (nnz,)) of the seed entries with weight > 0."""
    if not isinstance(seeds, Ragged):
        raise TypeError(f"personalized_pagerank: seeds must be a Ragged, got {type(seeds).__name__}")
    vals = seeds.values
    if len(vals) and (vals.min() < 0 or vals.max() >= n):
        raise ValueError(
            f"personalized_pagerank: seed item indices must lie in [0, N={n}); drop OOV / padding items first"
        )
    if seed_weights is None:
        w = np.ones(len(vals))
    else:
        w = np.asarray(seed_weights, dtype=np.float64)
        if w.shape != vals.shape:
            raise ValueError(
                f"personalized_pagerank: seed_weights must have one weight per seed entry ({vals.shape}), got {w.shape}"
            )
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("personalized_pagerank: seed_weights must be finite and >= 0")
    rows = np.repeat(np.arange(len(seeds), dtype=np.int64), seeds.lengths())
    keep = w > 0
    return rows[keep], vals[keep], w[keep]


def personalized_pagerank(
    adj,
    seeds: Ragged,
    damping: float = 0.85,
    tol: float = 1e-10,
    max_iter: int = 200,
    seed_weights: np.ndarray | None = None,
    method: PPRMethod | str = PPRMethod.POWER,
    eps: float = 1e-6,
    global_pr: np.ndarray | None = None,
) -> np.ndarray | sp.csr_matrix:
    """Personalized PageRank of B seed sets on ``adj`` (N, N) (or a :class:`Transition`).

    seeds         B rows of item indices in ``[0, N)`` (e.g. each user's last n history items); an item listed
                  twice gets twice the restart mass
    seed_weights  (nnz,) weights aligned with ``seeds.values`` (e.g. :func:`recency_weights`), default 1 each
    method        ``power``: dense (B, N) float64, each row agreeing (to the convergence tolerance) with
                  ``networkx.pagerank(G, damping, personalization=row's seed distribution, tol, max_iter)``;
                  ``push``: csr (B, N) float64 forward-push estimate, entrywise below the exact vector with
                  L1 gap <= eps * sum_u max(outdeg(u), 1) (see the module docstring); ``tol``/``max_iter``
                  then only apply to the global PageRank fallback
    global_pr     (N,) precomputed :func:`pagerank` (same damping) for rows without seeds; computed if needed

    Rows with no seed of positive weight fall back to the global PageRank (dense rows: the full vector;
    push: its entries >= eps).
    """
    _check_params(damping, tol, max_iter)
    try:
        method = PPRMethod(method)
    except ValueError:
        raise ValueError(
            f"personalized_pagerank: method must be one of {[m.value for m in PPRMethod]}, got {method!r}"
        ) from None
    t = Transition.from_adjacency(adj)
    n, b = t.n, len(seeds)
    rows, items, w = _seed_rows(seeds, seed_weights, n)
    row_mass = np.bincount(rows, weights=w, minlength=b)
    cold = np.flatnonzero(row_mass <= 0)
    warm = np.flatnonzero(row_mass > 0)
    if len(cold) and global_pr is None:
        global_pr = pagerank(t, damping=damping, tol=tol, max_iter=max_iter)
    if global_pr is not None:
        global_pr = np.asarray(global_pr, dtype=np.float64)
        if global_pr.shape != (n,):
            raise ValueError(f"personalized_pagerank: global_pr must have shape (N,) = ({n},), got {global_pr.shape}")
    w = w / row_mass[rows]

    if method is PPRMethod.POWER:
        out = np.empty((b, n))
        if len(cold):
            out[cold] = global_pr
        block = max(1, _POWER_BLOCK_ELEMENTS // max(n, 1))
        pos = np.full(b, -1, dtype=np.int64)
        for start in range(0, len(warm), block):
            chunk = warm[start : start + block]
            pos[chunk] = np.arange(len(chunk))
            sel = np.isin(rows, chunk)
            restart = np.zeros((n, len(chunk)))
            np.add.at(restart, (items[sel], pos[rows[sel]]), w[sel])
            out[chunk] = _power(t, restart, None, damping, tol, max_iter, start_at_restart=True).T
        return out

    if not eps > 0:
        raise ValueError(f"personalized_pagerank: eps must be > 0 for method='push', got {eps}")
    starts = np.r_[0, np.cumsum(np.bincount(rows, minlength=b))]
    row_ids, col_ids, vals = [], [], []
    if len(cold):
        g_idx = np.flatnonzero(global_pr >= eps)
        row_ids.append(np.repeat(cold, len(g_idx)))
        col_ids.append(np.tile(g_idx, len(cold)))
        vals.append(np.tile(global_pr[g_idx], len(cold)))
    if len(warm):
        pusher = _BatchPusher(t, damping, eps, min(len(warm), max(1, _PUSH_BLOCK_ELEMENTS // max(n, 1))))
        for lo in range(0, len(warm), pusher.block):
            chunk = warm[lo : lo + pusher.block]
            sel = slice(starts[chunk[0]], starts[chunk[-1] + 1])  # rows are sorted; cold rows have no entry
            owner = np.repeat(np.arange(len(chunk), dtype=np.int64), starts[chunk + 1] - starts[chunk])
            local, cols, q = pusher.run(owner, items[sel], w[sel])
            row_ids.append(chunk[local])
            col_ids.append(cols)
            vals.append(q)
    if not row_ids:
        return sp.csr_matrix((b, n))
    r_all, c_all, v_all = np.concatenate(row_ids), np.concatenate(col_ids), np.concatenate(vals)
    order = np.lexsort((c_all, r_all))
    indptr = np.r_[0, np.cumsum(np.bincount(r_all, minlength=b))].astype(np.int64)
    return sp.csr_matrix((v_all[order], c_all[order].astype(np.int64), indptr), shape=(b, n))


def _distinct(stamp: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The distinct values of ``idx`` in the order of their last occurrence, O(len) with a stamp array indexed by
    value (no sort, no hashing; stale stamps are harmless: every value's stamp is written before it is read)."""
    pos = np.arange(len(idx))
    stamp[idx] = pos  # the last occurrence of each value wins
    return idx[stamp[idx] == pos]


def _out_edges(indptr: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions into a csr matrix's ``indices``/``data`` of the rows ``nodes``, in order, and each row's
    length)."""
    lo, hi = indptr[nodes], indptr[nodes + 1]
    lens = hi - lo
    offsets = np.cumsum(lens) - lens
    return np.repeat(lo - offsets, lens) + np.arange(int(lens.sum())), lens


class _Pusher:
    """Forward push for one seed distribution at a time, with dense work vectors reused across calls (only the
    touched entries are reset). Each round pushes every node above threshold (vectorized). The plain reference
    of :class:`_BatchPusher`, which :func:`personalized_pagerank` runs."""

    def __init__(self, t: Transition, damping: float, eps: float) -> None:
        self.t = t
        self.alpha = damping
        self.threshold = eps * np.maximum(t.out_degree, 1).astype(np.float64)
        self.r = np.zeros(t.n)
        self.q = np.zeros(t.n)
        self._stamp = np.zeros(t.n, dtype=np.int64)

    def _distinct(self, idx: np.ndarray) -> np.ndarray:
        return _distinct(self._stamp, idx)

    def run(self, seeds: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(nodes (n_out,) sorted, estimate q[nodes], residual mass sum(r)) for the restart distribution
        ``sum_i weights[i] e_{seeds[i]}`` (weights sum to 1)."""
        t, alpha, r, q, thr = self.t, self.alpha, self.r, self.q, self.threshold
        indptr, indices, data = t.p.indptr, t.p.indices, t.p.data
        s_nodes, s_inv = np.unique(seeds, return_inverse=True)
        s_w = np.bincount(s_inv, weights=weights, minlength=len(s_nodes))
        r[s_nodes] += s_w
        touched = [s_nodes]
        pushed = []
        frontier = s_nodes[r[s_nodes] > thr[s_nodes]]
        while len(frontier):
            m = r[frontier]
            r[frontier] = 0.0
            q[frontier] += (1.0 - alpha) * m
            pushed.append(frontier)
            idx, lens = _out_edges(indptr, frontier)
            tgt, w_edge = indices[idx], data[idx]
            np.add.at(r, tgt, np.repeat(alpha * m, lens) * w_edge)
            dang_mass = alpha * m[t.dangling[frontier]].sum()
            if dang_mass > 0:
                r[s_nodes] += dang_mass * s_w
                tgt = np.concatenate([tgt, s_nodes])
            cand = self._distinct(tgt)
            touched.append(cand)
            frontier = cand[r[cand] > thr[cand]]
        nodes = np.sort(self._distinct(np.concatenate(pushed))) if pushed else np.zeros(0, dtype=np.int64)
        est = q[nodes].copy()
        all_touched = np.concatenate(touched)
        residual = float(r[self._distinct(all_touched)].sum())
        q[nodes] = 0.0
        r[all_touched] = 0.0
        return nodes.astype(np.int64), est, residual


class _BatchPusher:
    """Forward push for B seed distributions at once, each exactly as :class:`_Pusher` runs it alone.

    State lives in flat ``(B * N,)`` arrays keyed ``key = row * N + node``. A round applies the single-user
    round to every row's frontier at once; the frontier is kept in an order whose restriction to one row is
    that row's single-user order (rows never share a key, and :meth:`_Pusher._distinct` keeps the order of last
    occurrences), and ``np.add.at`` accumulates in array order, so each row performs the same floating-point
    operations in the same order: the estimates are bitwise those of :class:`_Pusher` (tested). Python
    overhead is paid per round instead of per row and round. Memory: three ``B * N`` arrays (``block`` rows).
    """

    def __init__(self, t: Transition, damping: float, eps: float, block: int) -> None:
        self.t = t
        self.alpha = damping
        self.block = int(block)
        self.threshold = eps * np.maximum(t.out_degree, 1).astype(np.float64)
        size = self.block * t.n
        self.r = np.zeros(size)
        self.q = np.zeros(size)
        self._stamp = np.zeros(size, dtype=np.int64)

    def _distinct(self, idx: np.ndarray) -> np.ndarray:
        return _distinct(self._stamp, idx)

    def run(self, owner: np.ndarray, seeds: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                      np.ndarray]:
        """(rows, nodes, estimates) sorted by (row, node) for the restart distributions
        ``sum_{i: owner[i] = b} weights[i] e_{seeds[i]}`` of rows ``b < block`` (``owner`` ascending; each
        row's weights sum to 1)."""
        t, alpha, r, q, thr, n = self.t, self.alpha, self.r, self.q, self.threshold, self.t.n
        indptr, indices, data = t.p.indptr, t.p.indices, t.p.data
        s_keys, s_inv = np.unique(owner * n + seeds, return_inverse=True)
        s_w = np.bincount(s_inv.ravel(), weights=weights, minlength=len(s_keys))
        s_row = s_keys // n
        s_start = np.searchsorted(s_row, np.arange(self.block + 1))  # row b's seeds: s_keys[s_start[b]:s_start[b+1]]
        r[s_keys] += s_w
        touched = [s_keys]
        pushed = []
        frontier = s_keys[r[s_keys] > thr[s_keys % n]]
        while len(frontier):
            m = r[frontier]
            r[frontier] = 0.0
            q[frontier] += (1.0 - alpha) * m
            pushed.append(frontier)
            rows, nodes = frontier // n, frontier % n
            idx, lens = _out_edges(indptr, nodes)
            tgt = np.repeat(rows * n, lens) + indices[idx]
            np.add.at(r, tgt, np.repeat(alpha * m, lens) * data[idx])
            dang = t.dangling[nodes]
            if dang.any():  # per row: alpha * (its frontier's dangling masses, in its order).sum(), as _Pusher
                order = np.argsort(rows, kind="stable")
                srows, sm, sd = rows[order], m[order], dang[order]
                bounds = np.searchsorted(srows, np.unique(srows[sd]), side="left")
                ends = np.searchsorted(srows, srows[bounds], side="right")
                extra = []
                for a, e in zip(bounds, ends):
                    mass = alpha * sm[a:e][sd[a:e]].sum()
                    if mass > 0:
                        b = int(srows[a])
                        ks = s_keys[s_start[b] : s_start[b + 1]]
                        r[ks] += mass * s_w[s_start[b] : s_start[b + 1]]
                        extra.append(ks)
                if extra:
                    tgt = np.concatenate([tgt, *extra])
            cand = self._distinct(tgt)
            touched.append(cand)
            frontier = cand[r[cand] > thr[cand % n]]
        keys = np.sort(self._distinct(np.concatenate(pushed))) if pushed else np.zeros(0, dtype=np.int64)
        est = q[keys].copy()
        q[keys] = 0.0
        r[np.concatenate(touched)] = 0.0
        return keys // n, keys % n, est


# ------------------------------------------------------------------------------------------------------
# Top-k and the candidate source
# ------------------------------------------------------------------------------------------------------


def top_ppr(ppr, k: int, exclude: Ragged | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` items of each row of ``ppr`` (B, N) (dense array or scipy.sparse), highest first, ties by lower
    index. Excluded items and items with score <= 0 (unreachable) are never returned; rows with fewer than k
    are padded with -1 / NaN. Returns (items (B, k) int64, scores (B, k) float64). Sparse input is never
    densified: O(nnz log nnz)."""
    if k < 0:
        raise ValueError(f"top_ppr: k must be >= 0, got {k}")
    if not sp.issparse(ppr):
        scores = np.array(ppr, dtype=np.float64, copy=True)
        if scores.ndim != 2:
            raise ValueError(f"top_ppr: ppr must be (B, N), got shape {scores.shape}")
        scores[~(scores > 0)] = -np.inf
        return top_k(scores, k, exclude)
    m = sp.csr_matrix(ppr, dtype=np.float64)
    b, n = m.shape
    if exclude is not None and len(exclude) != b:
        raise ValueError(f"top_ppr: exclude has {len(exclude)} rows for B={b}")
    rows = np.repeat(np.arange(b, dtype=np.int64), np.diff(m.indptr))
    cols = m.indices.astype(np.int64)
    vals = m.data
    keep = vals > 0
    if exclude is not None and len(exclude.values):
        ex_rows = np.repeat(np.arange(b, dtype=np.int64), exclude.lengths())
        ok = (exclude.values >= 0) & (exclude.values < n)
        keep &= ~np.isin(rows * n + cols, ex_rows[ok] * n + exclude.values[ok])
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=b)
    rank = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    sel = rank < k
    items = np.full((b, k), -1, dtype=np.int64)
    scores = np.full((b, k), np.nan)
    items[rows[sel], rank[sel]] = cols[sel]
    scores[rows[sel], rank[sel]] = vals[sel]
    return items, scores


@dataclasses.dataclass(frozen=True)
class PPRConfig:
    """The graph candidate source.

    last_n             seeds: each request's last n history items
    damping            PageRank damping alpha (probability of following an edge)
    method             power (dense, exact to tol) or push (sparse, local; use for large catalogues)
    eps                push threshold (see the module docstring)
    tol, max_iter      power-iteration convergence (global PageRank; PPR with method=power)
    recency_half_life  seed weight 0.5 ** (age / half_life), age in events from the most recent (null: uniform)
    """

    last_n: int = 20
    damping: float = 0.85
    method: PPRMethod = PPRMethod.PUSH
    eps: float = 1e-6
    tol: float = 1e-10
    max_iter: int = 200
    recency_half_life: float | None = None

    def __post_init__(self) -> None:
        if self.last_n < 1:
            raise ConfigError(f"last_n: must be >= 1, got {self.last_n}")
        if not (0.0 <= self.damping < 1.0):
            raise ConfigError(f"damping: must be in [0, 1), got {self.damping}")
        if not self.eps > 0:
            raise ConfigError(f"eps: must be > 0, got {self.eps}")
        if not self.tol > 0:
            raise ConfigError(f"tol: must be > 0, got {self.tol}")
        if self.max_iter < 1:
            raise ConfigError(f"max_iter: must be >= 1, got {self.max_iter}")
        if self.recency_half_life is not None and not self.recency_half_life > 0:
            raise ConfigError(f"recency_half_life: must be > 0 or null, got {self.recency_half_life}")


class GraphSource:
    """Retrieval candidate source: personalized PageRank on the item graph, seeded by each request's recent
    history; requests without history get the global PageRank.

    ``candidates(requests, k) -> (items (B, k) int64, -1 padding; scores (B, k) float64 PPR mass, NaN padding)``
    never returns ``requests.exclude`` items. Build with a built graph (``GraphSource(graph, cfg).fit()``) or
    from an engagement log (``GraphSource(cfg=cfg).fit_log(...)``).
    """

    name = "graph"
    _FILES = ("graph_source.json", "global_pagerank.npy")

    def __init__(self, graph: sp.spmatrix | None = None, cfg: PPRConfig = PPRConfig()) -> None:
        if not isinstance(cfg, PPRConfig):
            raise TypeError(f"GraphSource: cfg must be a PPRConfig, got {type(cfg).__name__}")
        self.graph = graph
        self.cfg = cfg
        self.transition: Transition | None = None
        self.global_pr: np.ndarray | None = None

    def fit(self) -> "GraphSource":
        """Precompute the random walk and the global PageRank of ``self.graph``."""
        if self.graph is None:
            raise ValueError("GraphSource.fit: no graph; pass one to the constructor or use fit_log(...)")
        self.transition = Transition.from_adjacency(self.graph)
        self.global_pr = pagerank(self.transition, self.cfg.damping, self.cfg.tol, self.cfg.max_iter)
        logger.info("graph source: %d items, %d edges", self.transition.n, self.transition.p.nnz)
        return self

    def fit_log(
        self,
        users: np.ndarray,
        items: np.ndarray,
        times: np.ndarray,
        n_items: int,
        graph_cfg: GraphConfig = GraphConfig(),
        links_src: np.ndarray | None = None,
        links_dst: np.ndarray | None = None,
    ) -> "GraphSource":
        """Build the item graph from an engagement log (see :func:`build_item_graph`), then :meth:`fit`."""
        self.graph = build_item_graph(users, items, times, n_items, graph_cfg, links_src, links_dst)
        return self.fit()

    @property
    def n_items(self) -> int:
        return 0 if self.graph is None else self.graph.shape[0]

    def _check_fitted(self) -> Transition:
        if self.transition is None or self.global_pr is None:
            raise RuntimeError("GraphSource: call fit() (or load()) before candidates()")
        return self.transition

    def ppr(self, history: Ragged):
        """PPR of each row's last ``last_n`` items (items outside the graph ignored): dense or csr (B, N)."""
        t = self._check_fitted()
        seeds = history.last(self.cfg.last_n)
        ok = (seeds.values >= 0) & (seeds.values < t.n)
        weights = recency_weights(seeds, self.cfg.recency_half_life) if self.cfg.recency_half_life else None
        if not ok.all():
            lens = np.bincount(np.repeat(np.arange(len(seeds)), seeds.lengths())[ok], minlength=len(seeds))
            weights = None if weights is None else weights[ok]
            seeds = Ragged(np.r_[0, np.cumsum(lens)], seeds.values[ok])
        return personalized_pagerank(
            t, seeds, self.cfg.damping, self.cfg.tol, self.cfg.max_iter, weights, self.cfg.method, self.cfg.eps,
            global_pr=self.global_pr,
        )

    def candidates(self, requests: Requests, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(items (B, k) int64, scores (B, k) float64) by PPR, excluding ``requests.exclude``."""
        return top_ppr(self.ppr(requests.history), k, requests.exclude)

    def save(self, folder: str | Path) -> None:
        """Write ``item_graph.*.npy``, ``global_pagerank.npy`` and ``graph_source.json`` into ``folder``."""
        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_graph(folder / "item_graph", self.graph)
        np.save(folder / "global_pagerank.npy", self.global_pr, allow_pickle=False)
        write_json(folder / "graph_source.json", {"format": 1, "config": to_dict(self.cfg)})

    @classmethod
    def load(cls, folder: str | Path) -> "GraphSource":
        folder = Path(folder)
        meta_path = folder / "graph_source.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != 1:
            raise ValueError(f"{meta_path}: unsupported format {meta.get('format')!r} (expected 1)")
        cfg = from_dict(PPRConfig, meta.get("config"), prefix=f"{meta_path}: config")
        src = cls(load_graph(folder / "item_graph"), cfg)
        gpr = np.load(folder / "global_pagerank.npy", allow_pickle=False)
        if gpr.shape != (src.n_items,):
            raise ValueError(f"{folder / 'global_pagerank.npy'}: expected shape ({src.n_items},), got {gpr.shape}")
        src.transition = Transition.from_adjacency(src.graph)
        src.global_pr = gpr
        return src
