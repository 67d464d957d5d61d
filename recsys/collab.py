"""Item-item collaborative models (EASE, item-kNN) pruned to a sparse N x N weight matrix.

Shapes: U users, N catalogue items, M modelled items (EASE: at most ``max_items``), K kept weights per row,
B requests, C candidates per request.

One fitted :class:`ItemItem` holds ``W`` (N, N) CSR; a user's score of item ``c`` is

    s(u, c) = sum_{h in distinct history(u)} W[h, c]

the scoring rule of both models (Steck 2019, eq. 1 with the binary history; Sarwar et al. 2001). Each row of
``W`` keeps its ``K`` largest weights (EASE: largest ``|w|``, its negative weights push items down; item-kNN:
largest cosine), so storage and scoring are O(N K) and a request only touches the rows of its own history:
the cost of a request is O(|history| K), whatever N is. It serves two parts of the funnel:

* the ``collab`` candidate source (:class:`recsys.retrieval.sources.CollabSource`): each request's top items by
  ``s`` (``scores``);
* the ``collab_score`` ranker feature (:mod:`recsys.features`): ``s`` of every candidate (``pair_scores``).

EASE inverts a dense M x M Gram matrix (8 M^2 bytes: 3.2 GB at M = 20,000), so it models only the ``max_items``
most engaged items (ties: lower index); item-kNN's pruned cosine (:func:`cosine_topn`) scales to the whole
catalogue. Every product with the user side is a scipy sparse product, which sums each row in index order, so
a request's scores never depend on the other requests of its batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from recsys.configlib import ConfigError, from_dict, to_dict
from recsys.graph.item_graph import load_graph, save_graph
from recsys.io import write_json
from recsys.types import Ragged

logger = logging.getLogger(__name__)

METHODS = ("ease", "itemknn", "none")
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class CollabConfig:
    """The item-item model.

    method        ``itemknn`` (pruned cosine; the default, chosen on validation: README), ``ease`` (closed-form
                  EASE, Steck WWW 2019) or ``none`` (no model)
    l2            EASE's ridge penalty on the weights
    n_neighbors   K: weights kept per row of W (EASE: the K largest |w|; item-kNN: the K largest cosines)
    max_items     EASE models only this many most engaged items (its dense M x M inverse); the others get
                  empty rows and columns
    blas_threads  BLAS threads of EASE's Cholesky inversion (OpenBLAS with 2 threads crashed on a 17,632-item
                  matrix that 1 thread inverts)
    """

    method: str = "itemknn"
    l2: float = 500.0
    n_neighbors: int = 200
    max_items: int = 20000
    blas_threads: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"collab.method: must be one of {list(METHODS)}, got {self.method!r}")
        for name, ok, what in (
            ("l2", self.l2 > 0, "> 0"),
            ("n_neighbors", self.n_neighbors >= 1, ">= 1"),
            ("max_items", self.max_items >= 1, ">= 1"),
            ("blas_threads", self.blas_threads >= 1, ">= 1"),
        ):
            if not ok:
                raise ConfigError(f"collab.{name}: must be {what}, got {getattr(self, name)!r}")


# ------------------------------------------------------------------------------------------------------------
# Sparse helpers
# ------------------------------------------------------------------------------------------------------------


def positive_matrix(users: np.ndarray, items: np.ndarray, n_items: int) -> sp.csr_matrix:
    """(U, N) binary CSR of (user, item) engagements; users are factorised from ``users`` (any ids), items
    outside [0, N) dropped, duplicates counted once."""
    users = np.asarray(users)
    items = np.asarray(items, dtype=np.int64)
    ok = (items >= 0) & (items < n_items)
    codes = np.unique(users[ok], return_inverse=True)[1].astype(np.int64) if ok.any() else np.zeros(0, np.int64)
    x = sp.csr_matrix((np.ones(len(codes)), (codes, items[ok])),
                      shape=(int(codes.max(initial=-1)) + 1, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def binary_history(history: Ragged, n_items: int, dtype=np.float64) -> sp.csr_matrix:
    """(B, N) binary CSR of each request's history items (duplicates and out-of-range items dropped).

    Column indices are sorted within each row, so sparse products sum in a fixed order per row.
    """
    b = len(history)
    rows = np.repeat(np.arange(b, dtype=np.int64), history.lengths())
    cols = history.values
    ok = (cols >= 0) & (cols < n_items)
    m = sp.csr_matrix((np.ones(int(ok.sum()), dtype=dtype), (rows[ok], cols[ok])), shape=(b, n_items))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def pair_lookup(keys: np.ndarray, vals: np.ndarray, query: np.ndarray, default=0) -> np.ndarray:
    """``vals`` at the ``query`` keys (``keys`` sorted, unique), ``default`` where absent."""
    out = np.full(query.shape, default, dtype=vals.dtype)
    if len(keys) == 0:
        return out
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    hit = keys[pos] == query
    out[hit] = vals[pos[hit]]
    return out


def gather_csr(m: sp.csr_matrix, cols: np.ndarray) -> np.ndarray:
    """(B, C) float64 ``m[b, cols[b, c]]`` of a (B, N) csr matrix (0 where absent), by a sorted-key lookup
    (row-wise, so each row's values do not depend on the other rows)."""
    m = sp.csr_matrix(m)
    m.sum_duplicates()  # also sorts the indices
    b, n = m.shape
    keys = np.repeat(np.arange(b, dtype=np.int64), np.diff(m.indptr)) * n + m.indices.astype(np.int64)
    return pair_lookup(keys, m.data.astype(np.float64), np.arange(b, dtype=np.int64)[:, None] * n + cols)


def top_per_row(r: np.ndarray, c: np.ndarray, v: np.ndarray, key: np.ndarray, n_rows: int, k: int):
    """The entries (r, c, v) with the k largest ``key`` per row (ties: lower column), sorted by row, then key
    descending."""
    order = np.lexsort((c, -key, r))
    r, c, v = r[order], c[order], v[order]
    rank = np.arange(len(r)) - np.searchsorted(r, np.arange(n_rows))[r]
    keep = rank < k
    return r[keep], c[keep], v[keep]


def cosine_topn(x: sp.csr_matrix, n_neighbors: int, block: int = 2048) -> sp.csr_matrix:
    """Item-item cosine similarity of the columns of ``x`` (U, N), each row pruned to its ``n_neighbors`` best.

    ``sim(h, i) = |U_h ∩ U_i| / sqrt(|U_h| |U_i|)`` for a binary ``x``; the diagonal is 0. Row ``h`` keeps the
    ``n_neighbors`` largest entries (ties: lower column index). Computed in row blocks of ``block`` items so
    memory stays O(block x N) besides the result. Returns (N, N) CSR float64.
    """
    n = x.shape[1]
    xc = x.tocsc()
    xt = x.T.tocsr()  # (N, U)
    norms = np.sqrt(np.asarray(xc.multiply(xc).sum(axis=0)).ravel())
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    parts = []
    for start in range(0, n, block):
        stop = min(start + block, n)
        s = (xt[start:stop] @ x).tocoo()  # (b, N) co-occurrence counts
        r, c, v = s.row.astype(np.int64), s.col.astype(np.int64), s.data * inv[start + s.row] * inv[s.col]
        keep = (r + start != c) & (v > 0)
        r, c, v = top_per_row(r[keep], c[keep], v[keep], v[keep], stop - start, n_neighbors)
        parts.append(sp.csr_matrix((v, (r, c)), shape=(stop - start, n)))
    if not parts:
        return sp.csr_matrix((0, 0), dtype=np.float64)
    sim = sp.vstack(parts, format="csr")
    sim.sort_indices()
    return sim


# ------------------------------------------------------------------------------------------------------------
# EASE
# ------------------------------------------------------------------------------------------------------------


def ease_memory_bytes(n_items: int) -> int:
    """Bytes :func:`ease_weights` needs for ``n_items`` modelled items: one dense M x M float64 matrix (the Gram
    matrix, inverted and turned into the weights in place) plus one column block of it."""
    return 8 * n_items * n_items + 8 * n_items * min(n_items, 1024)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable`` of /proc/meminfo), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_ease_memory(m: int, owner: str, setting: str) -> None:
    """Raise MemoryError (naming ``setting``) before allocating when M modelled items do not fit in memory."""
    need, avail = ease_memory_bytes(m), available_memory()
    if avail is not None and need > avail:
        raise MemoryError(
            f"{owner}: {m:,} modelled items need {need / 2**30:.1f} GiB for the dense {m:,} x {m:,} Gram "
            f"matrix, {avail / 2**30:.1f} GiB is available; lower {setting}"
        )


def _gram(x: sp.spmatrix | np.ndarray, block: int = 1024) -> np.ndarray:
    """(M, M) Fortran-ordered float64 ``X^T X`` of ``x`` (U, M), filled by column blocks (no sparse M x M copy)."""
    if not sp.issparse(x):
        xa = np.asarray(x, dtype=np.float64)
        return np.asfortranarray(xa.T @ xa)
    xc = sp.csc_matrix(x, dtype=np.float64)
    xt = xc.T.tocsr()  # (M, U)
    m = xc.shape[1]
    g = np.empty((m, m), dtype=np.float64, order="F")
    for j0 in range(0, m, block):
        j1 = min(j0 + block, m)
        g[:, j0:j1] = (xt @ xc[:, j0:j1]).toarray()
    return g


def ease_weights(x: sp.spmatrix | np.ndarray, l2: float, block: int = 1024, blas_threads: int | None = 1) -> np.ndarray:
    """EASE item-item weights (Steck, WWW 2019, eq. 8): the closed form of

        min_B ||X - X B||_F^2 + l2 ||B||_F^2   subject to diag(B) = 0.

    ``G = X^T X + l2 I``, ``P = G^-1``, ``B_ij = -P_ij / P_jj`` (i != j), ``B_jj = 0``. ``x`` (U, M) -> (M, M)
    float64. ``G`` is symmetric positive definite for ``l2 > 0``; it is built by column blocks and inverted via
    Cholesky (LAPACK potrf / potri) in place, so the peak memory is about one M x M float64 matrix besides
    ``x`` (:func:`ease_memory_bytes`: 3.2 GB at M=20000). The LAPACK calls run with at most ``blas_threads``
    BLAS threads (None: the library's default): OpenBLAS with 2 threads crashed (SIGSEGV) inverting a
    17,632-item Gram matrix that 1 thread inverts. The multi-threaded result may differ in the last bits with
    the thread count: fit once and give the fitted model to every shard.
    """
    from threadpoolctl import threadpool_limits

    g = _gram(x, block)
    g[np.diag_indices_from(g)] += l2
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        return _ease_from_gram(g, block)


def _ease_from_gram(g: np.ndarray, block: int) -> np.ndarray:
    """EASE weights from a Fortran-ordered ``G = X^T X + l2 I``, overwriting it (see :func:`ease_weights`)."""
    c, info = scipy.linalg.lapack.dpotrf(g, lower=False, overwrite_a=True)
    if info != 0:
        raise RuntimeError(f"ease: Cholesky factorisation of X^T X + l2 I failed (LAPACK info {info})")
    p, info = scipy.linalg.lapack.dpotri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise RuntimeError(f"ease: inversion of X^T X + l2 I failed (LAPACK info {info})")
    m = p.shape[0]
    for j0 in range(0, m, block):  # potri fills the upper triangle only: mirror it, in place, block by block
        j1 = min(j0 + block, m)
        p[j0:j1, :j0] = p[:j0, j0:j1].T
        sq = p[j0:j1, j0:j1]
        low = np.tril_indices(j1 - j0, -1)
        sq[low] = sq.T[low]
    d = np.diag(p).copy()
    p /= -d[None, :]  # in place: B_ij = -P_ij / P_jj
    np.fill_diagonal(p, 0.0)
    return p


def most_engaged(x: sp.csr_matrix, m: int) -> np.ndarray:
    """The (sorted) column indices of the ``m`` columns of ``x`` with the most entries (ties: lower index)."""
    n = x.shape[1]
    if m >= n:
        return np.arange(n, dtype=np.int64)
    counts = np.asarray(x.sum(axis=0)).ravel()
    return np.sort(np.lexsort((np.arange(n), -counts))[:m]).astype(np.int64)


def prune_rows(w: np.ndarray, k: int, block: int = 1024) -> sp.csr_matrix:
    """(M, M) dense -> CSR keeping each row's ``k`` largest ``|w|`` nonzeros (ties: lower column), in row
    blocks (argpartition, then an exact order of the survivors)."""
    m = w.shape[0]
    parts = []
    for r0 in range(0, m, block):
        blk = w[r0:r0 + block]
        kk = min(k, m)
        if kk < m:
            cand = np.argpartition(-np.abs(blk), kk - 1, axis=1)[:, :kk]
            # the partition's boundary may split a tie: take every column whose |w| reaches the k-th value
            kth = np.abs(np.take_along_axis(blk, cand, axis=1)).min(axis=1)
            r, c = np.nonzero(np.abs(blk) >= kth[:, None])
        else:
            r, c = np.nonzero(np.ones(blk.shape, dtype=bool))
        v = blk[r, c]
        nz = v != 0
        r, c, v = top_per_row(r[nz], c[nz], v[nz], np.abs(v[nz]), len(blk), k)
        parts.append(sp.csr_matrix((v, (r, c)), shape=(len(blk), m)))
    out = sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, 0))
    out.sort_indices()
    return out


# ------------------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------------------


class ItemItem:
    """A fitted item-item model: ``weights`` (N, N) CSR float32, at most K nonzeros per row (module docstring).

    ``fit(users, items, n_items)`` takes engagements in catalogue indices; ``scores(history)`` (B, N) CSR and
    ``pair_scores(history, items)`` (B, C) compute ``s(u, c) = sum_{h in distinct history} W[h, c]``.
    """

    def __init__(self, cfg: CollabConfig = CollabConfig()) -> None:
        if not isinstance(cfg, CollabConfig):
            raise TypeError(f"ItemItem: cfg must be a CollabConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.weights: sp.csr_matrix | None = None

    @property
    def n_items(self) -> int:
        return 0 if self.weights is None else self.weights.shape[0]

    def fit(self, users: np.ndarray, items: np.ndarray, n_items: int) -> "ItemItem":
        cfg = self.cfg
        if cfg.method == "none":
            raise ValueError("ItemItem.fit: collab.method is 'none'")
        x = positive_matrix(users, items, n_items)
        if cfg.method == "itemknn":
            w = cosine_topn(x, cfg.n_neighbors)
        else:
            cols = most_engaged(x, cfg.max_items)
            check_ease_memory(len(cols), "collab (ease)", "collab.max_items")
            dense = ease_weights(x[:, cols], cfg.l2, blas_threads=cfg.blas_threads)
            small = prune_rows(dense, cfg.n_neighbors).tocoo()
            del dense
            w = sp.csr_matrix((small.data, (cols[small.row], cols[small.col])), shape=(n_items, n_items))
        w = sp.csr_matrix(w, dtype=np.float32)
        w.sort_indices()
        if not np.isfinite(w.data).all():
            raise FloatingPointError(f"collab ({cfg.method}): non-finite weights")
        self.weights = w
        logger.info("collab (%s): %d users x %d items, %d weights kept (<= %d per item)", cfg.method, x.shape[0],
                    n_items, w.nnz, cfg.n_neighbors)
        return self

    def _check(self) -> sp.csr_matrix:
        if self.weights is None:
            raise RuntimeError("ItemItem: call fit() or load() first")
        return self.weights

    def scores(self, history: Ragged) -> sp.csr_matrix:
        """(B, N) CSR float32 ``binary_history @ W``: the items with any weight from the history."""
        w = self._check()
        return binary_history(history, w.shape[0], np.float32) @ w

    def pair_scores(self, history: Ragged, items: np.ndarray) -> np.ndarray:
        """(B, C) float32 ``s(b, items[b, c])`` (``items`` valid catalogue indices; 0 without weights)."""
        return gather_csr(self.scores(history), np.asarray(items, dtype=np.int64)).astype(np.float32)

    def save(self, folder: str | Path) -> None:
        w = self._check()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_graph(folder / "weights", w)
        write_json(folder / "collab.json", {"format": FORMAT_VERSION, "config": to_dict(self.cfg)})

    @classmethod
    def load(cls, folder: str | Path, n_items: int | None = None) -> "ItemItem":
        folder = Path(folder)
        path = folder / "collab.json"
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format {meta.get('format')!r} (expected {FORMAT_VERSION})")
        out = cls(from_dict(CollabConfig, meta.get("config"), prefix=f"{path}: config"))
        w = load_graph(folder / "weights")
        if w.shape[0] != w.shape[1] or (n_items is not None and w.shape[0] != n_items):
            raise ValueError(f"{folder / 'weights'}: weights of shape {w.shape}, expected ({n_items}, {n_items})")
        out.weights = sp.csr_matrix(w, dtype=np.float32)
        return out


__all__ = ["CollabConfig", "ItemItem", "METHODS", "available_memory", "binary_history", "check_ease_memory",
           "cosine_topn", "ease_memory_bytes", "top_per_row", "ease_weights", "gather_csr", "most_engaged", "pair_lookup",
           "positive_matrix", "prune_rows"]
