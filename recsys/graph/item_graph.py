"""The item graph: co-engagement edges between items engaged by the same user close in time, plus the
dataset's explicit item links; and the co-engagement feature of (user, candidate) pairs.

Shapes: R interaction rows, N items, B users (requests), C candidates per request, M neighbours per item.

Edge weight (before pruning) between items ``a`` and ``b``::

    w(a, b) = sum over users u, over pairs of u's engagements (j, j + lag) with 1 <= lag <= max_gap_events,
              t[j + lag] - t[j] <= max_gap_seconds, item[j] = a, item[j + lag] = b, a != b, of
              event_decay ** (lag - 1) * 0.5 ** ((t[j + lag] - t[j]) / time_half_life_seconds)

(the item-to-item co-occurrence of session-based neighbourhood methods, e.g. Linden, Smith & York 2003,
"Amazon.com recommendations: item-to-item collaborative filtering"; Ludewig & Jannach 2018, "Evaluation of
session-based recommendation algorithms", SR/SKNN with a window and a position decay). Engagements of one
user are ordered by (time, input row). With ``symmetric`` the pair also adds ``w(b, a)``; otherwise edges run
from the earlier engagement to the later one. Self-pairs (the same item twice) are not edges.

Each item then keeps its ``top_m`` heaviest out-edges (ties: lower item index first), edges lighter than
``min_weight`` dropped first, and the explicit links (each distinct ``(src, dst)`` pair, weight
``link_weight``, both directions when ``symmetric``) are added on top: links are always kept, so an item's
out-degree is at most ``top_m`` + its number of links. A link that is also a co-engagement edge sums.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recsys.configlib import ConfigError
from recsys.types import Ragged

logger = logging.getLogger(__name__)

_GRAPH_PARTS = ("indptr", "indices", "data", "shape")


@dataclasses.dataclass(frozen=True)
class GraphConfig:
    """How the item graph is built (see the module docstring for the weight formula).

    max_gap_events         two engagements of one user at most this many engagements apart are co-engaged
    max_gap_seconds        ... and at most this many seconds apart (None: no time limit)
    top_m                  out-neighbours kept per item, heaviest first (None: keep all)
    link_weight            weight of each explicit item link, relative to one co-engagement (0: ignore links)
    symmetric              co-engagement and links add both directions (else earlier -> later, src -> dst)
    min_weight             co-engagement edges lighter than this are dropped before the top-M cut
    event_decay            a co-engagement ``lag`` events apart counts ``event_decay ** (lag - 1)`` (1: no decay)
    time_half_life_seconds a co-engagement ``dt`` seconds apart counts ``0.5 ** (dt / half_life)`` (None: off)
    """

    max_gap_events: int = 5
    max_gap_seconds: int | None = 7 * 24 * 3600
    top_m: int | None = 50
    link_weight: float = 1.0
    symmetric: bool = True
    min_weight: float = 0.0
    event_decay: float = 1.0
    time_half_life_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_gap_events < 1:
            raise ConfigError(f"max_gap_events: must be >= 1, got {self.max_gap_events}")
        if self.max_gap_seconds is not None and self.max_gap_seconds < 0:
            raise ConfigError(f"max_gap_seconds: must be >= 0 or null, got {self.max_gap_seconds}")
        if self.top_m is not None and self.top_m < 1:
            raise ConfigError(f"top_m: must be >= 1 or null (keep all), got {self.top_m}")
        if not (np.isfinite(self.link_weight) and self.link_weight >= 0):
            raise ConfigError(f"link_weight: must be a finite number >= 0, got {self.link_weight}")
        if not (np.isfinite(self.min_weight) and self.min_weight >= 0):
            raise ConfigError(f"min_weight: must be a finite number >= 0, got {self.min_weight}")
        if not (0.0 < self.event_decay <= 1.0):
            raise ConfigError(f"event_decay: must be in (0, 1], got {self.event_decay}")
        if self.time_half_life_seconds is not None and not self.time_half_life_seconds > 0:
            raise ConfigError(f"time_half_life_seconds: must be > 0 or null, got {self.time_half_life_seconds}")


def _as_1d(name: str, a, dtype) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"build_item_graph: {name} must be a 1-d array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"build_item_graph: {name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(dtype, copy=False)


def _top_m_per_row(m: sp.csr_matrix, top_m: int | None) -> sp.csr_matrix:
    """Keep each row's ``top_m`` largest entries (ties: lower column first). Vectorized; only the entries of
    rows longer than ``top_m`` are sorted (O(h log h) for h such entries)."""
    if top_m is None or m.nnz == 0:
        return m
    counts = np.diff(m.indptr)
    if counts.max() <= top_m:
        return m
    rows = np.repeat(np.arange(m.shape[0], dtype=np.int64), counts)
    heavy = np.flatnonzero(counts[rows] > top_m)  # entries of rows that must be cut
    h_rows = rows[heavy]
    order = heavy[np.lexsort((m.indices[heavy], -m.data[heavy], h_rows))]  # grouped by row, heaviest first
    h_counts = counts[counts > top_m]
    rank = np.arange(len(heavy), dtype=np.int64) - np.repeat(np.cumsum(h_counts) - h_counts, h_counts)
    keep = np.ones(m.nnz, dtype=bool)
    keep[order[rank >= top_m]] = False
    out = sp.csr_matrix((m.data[keep], m.indices[keep], np.r_[0, np.cumsum(np.minimum(counts, top_m))]), shape=m.shape)
    out.has_sorted_indices = m.has_sorted_indices
    return out


def _links_matrix(links_src, links_dst, n_items: int, cfg: GraphConfig) -> sp.csr_matrix | None:
    """(N, N) explicit links: ``link_weight`` per distinct (src, dst) pair (both ways when symmetric)."""
    if (links_src is None) != (links_dst is None):
        raise ValueError("build_item_graph: pass both links_src and links_dst, or neither")
    if links_src is None or cfg.link_weight == 0:
        return None
    src, dst = np.asarray(links_src), np.asarray(links_dst)
    if src.shape != dst.shape or src.ndim != 1:
        raise ValueError(
            f"build_item_graph: links_src {src.shape} and links_dst {dst.shape} must be 1-d and of equal length"
        )
    src = _as_1d("links_src", src, np.int64)
    dst = _as_1d("links_dst", dst, np.int64)
    bad = (src < 0) | (src >= n_items) | (dst < 0) | (dst >= n_items)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"build_item_graph: item link {i} ({src[i]} -> {dst[i]}) is outside the catalogue [0, {n_items}); "
            "encode links with the catalogue's item vocab and drop unknown items first"
        )
    keep = src != dst
    src, dst = src[keep], dst[keep]
    if cfg.symmetric:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    links = sp.csr_matrix((np.ones(len(src)), (src, dst)), shape=(n_items, n_items))
    links.sum_duplicates()
    links.data[:] = cfg.link_weight  # each distinct (src, dst) pair once
    return links


def build_item_graph(
    users: np.ndarray,
    items: np.ndarray,
    times: np.ndarray,
    n_items: int,
    cfg: GraphConfig = GraphConfig(),
    links_src: np.ndarray | None = None,
    links_dst: np.ndarray | None = None,
) -> sp.csr_matrix:
    """The (N, N) float32 item graph of an engagement log (see the module docstring for the weights).

    users, items, times  (R,) int user index, item index (catalogue indices) and Unix seconds of each engagement
                         (pass only engagements, e.g. positive-label rows, of the training window). Items
                         outside ``[0, n_items)`` (e.g. the OOV index ``n_items``) keep their place in the
                         user's sequence but make no edge.
    links_src, links_dst (L,) int explicit item links in catalogue indices (e.g. ``item_links.parquet``),
                         or None. Must lie in ``[0, n_items)``; self-links are ignored.

    Vectorized: one lexsort by (user, time), then for each lag 1..max_gap_events one comparison of the
    sorted arrays against themselves shifted by ``lag``; pairs are summed by COO -> CSR conversion. Memory
    O(R + nnz) per lag. Row ``a`` of the result holds ``a``'s out-neighbours, column indices sorted.
    """
    if not isinstance(cfg, GraphConfig):
        raise TypeError(f"build_item_graph: cfg must be a GraphConfig, got {type(cfg).__name__}")
    n_items = int(n_items)
    if n_items < 0:
        raise ValueError(f"build_item_graph: n_items must be >= 0, got {n_items}")
    users = _as_1d("users", users, np.int64)
    items = _as_1d("items", items, np.int64)
    times = _as_1d("times", times, np.int64)
    if not (len(users) == len(items) == len(times)):
        raise ValueError(
            f"build_item_graph: users ({len(users)}), items ({len(items)}) and times ({len(times)}) "
            "must have one entry per engagement"
        )
    shape = (n_items, n_items)
    links = _links_matrix(links_src, links_dst, n_items, cfg)  # validated before the heavy work

    order = np.lexsort((times, users))  # stable: ties in time keep input row order
    u, it, t = users[order], items[order], times[order]
    valid = (it >= 0) & (it < n_items)
    acc = sp.csr_matrix(shape, dtype=np.float64)
    for lag in range(1, cfg.max_gap_events + 1):
        if lag >= len(u):
            break
        a, b = it[:-lag], it[lag:]
        ok = (u[:-lag] == u[lag:]) & valid[:-lag] & valid[lag:] & (a != b)
        dt = t[lag:] - t[:-lag]
        if cfg.max_gap_seconds is not None:
            ok &= dt <= cfg.max_gap_seconds
        if not ok.any():
            continue
        a, b, dt = a[ok], b[ok], dt[ok]
        w = np.full(len(a), cfg.event_decay ** (lag - 1), dtype=np.float64)
        if cfg.time_half_life_seconds is not None:
            w *= np.exp2(-dt.astype(np.float64) / cfg.time_half_life_seconds)
        if cfg.symmetric:
            a, b, w = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([w, w])
        acc = acc + sp.csr_matrix((w, (a, b)), shape=shape)
    acc.sum_duplicates()
    if cfg.min_weight > 0:
        acc.data[acc.data < cfg.min_weight] = 0.0
    acc.eliminate_zeros()
    n_co = acc.nnz
    graph = _top_m_per_row(acc, cfg.top_m)
    n_kept = graph.nnz

    if links is not None:
        graph = graph + links
    graph = sp.csr_matrix(graph, dtype=np.float32)
    graph.sum_duplicates()
    graph.sort_indices()
    logger.info(
        "item graph: %d items, %d engagements, %d co-engagement edges (%d kept by top_m=%s), %d link edges, "
        "%d edges in total",
        n_items, len(users), n_co, n_kept, cfg.top_m, 0 if links is None else links.nnz, graph.nnz,
    )
    return graph


# ------------------------------------------------------------------------------------------------------
# Persistence: four .npy files, no pickle
# ------------------------------------------------------------------------------------------------------


def _part_path(path_prefix: str | Path, part: str) -> Path:
    return Path(f"{os.fspath(path_prefix)}.{part}.npy")


def graph_files(path_prefix: str | Path) -> list[Path]:
    """The files :func:`save_graph` writes for ``path_prefix``."""
    return [_part_path(path_prefix, p) for p in _GRAPH_PARTS]


def save_graph(path_prefix: str | Path, csr: sp.spmatrix) -> list[Path]:
    """Write ``csr`` as ``{prefix}.indptr.npy``, ``.indices.npy``, ``.data.npy``, ``.shape.npy``.

    Each file is written to a temporary name and renamed into place. Returns the paths written.
    """
    m = sp.csr_matrix(csr)
    m.sort_indices()
    arrays = {
        "indptr": m.indptr.astype(np.int64),
        "indices": m.indices.astype(np.int64),
        "data": m.data,
        "shape": np.asarray(m.shape, dtype=np.int64),
    }
    paths = []
    for part in _GRAPH_PARTS:
        path = _part_path(path_prefix, part)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, arrays[part], allow_pickle=False)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def load_graph(path_prefix: str | Path) -> sp.csr_matrix:
    """Read a graph written by :func:`save_graph` (``np.load(allow_pickle=False)``), checking its structure."""
    arrays = {}
    for part in _GRAPH_PARTS:
        path = _part_path(path_prefix, part)
        if not path.exists():
            expected = ", ".join(map(str, graph_files(path_prefix)))
            raise FileNotFoundError(f"{path}: graph file missing (a saved graph is {expected})")
        arrays[part] = np.load(path, allow_pickle=False)
    shape, indptr, indices, data = arrays["shape"], arrays["indptr"], arrays["indices"], arrays["data"]
    prefix = os.fspath(path_prefix)
    if shape.shape != (2,) or (shape < 0).any():
        raise ValueError(f"{prefix}.shape.npy: expected 2 non-negative integers, got {shape!r}")
    n_rows, n_cols = int(shape[0]), int(shape[1])
    if indptr.shape != (n_rows + 1,) or indptr[0] != 0 or (np.diff(indptr) < 0).any():
        raise ValueError(f"{prefix}.indptr.npy: expected {n_rows + 1} non-decreasing offsets starting at 0")
    if indices.shape != data.shape or indices.ndim != 1 or len(indices) != indptr[-1]:
        raise ValueError(
            f"{prefix}: indices {indices.shape} and data {data.shape} must both have indptr[-1] = {indptr[-1]} entries"
        )
    if len(indices) and (indices.min() < 0 or indices.max() >= n_cols):
        raise ValueError(f"{prefix}.indices.npy: column indices must lie in [0, {n_cols})")
    return sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_cols))


# ------------------------------------------------------------------------------------------------------
# Feature: co-engagement of candidates with the user's recent history
# ------------------------------------------------------------------------------------------------------


def co_engagement(graph: sp.spmatrix, history: Ragged, last_n: int, candidates: np.ndarray) -> np.ndarray:
    """(B, C) float32: ``score[b, c] = sum_{h in last_n(history[b])} graph[h, candidates[b, c]]``.

    graph       (N, N) item graph (row = from, column = to)
    history     B rows of item indices, oldest first; an item present twice in the last ``last_n`` counts twice;
                indices outside ``[0, N)`` are ignored
    candidates  (B, C) int item indices; -1 (padding) or any index outside ``[0, N)`` scores 0

    Vectorized: H (B, N) = counts of the last-n items, S = H @ graph (sparse), then one gather of S at the
    (b, candidate) pairs.
    """
    g = sp.csr_matrix(graph)
    n = g.shape[0]
    if g.shape != (n, n):
        raise ValueError(f"co_engagement: graph must be square, got shape {g.shape}")
    cand = np.asarray(candidates)
    if cand.ndim != 2 or cand.shape[0] != len(history):
        raise ValueError(f"co_engagement: candidates must be (B={len(history)}, C), got shape {cand.shape}")
    if last_n < 1:
        raise ValueError(f"co_engagement: last_n must be >= 1, got {last_n}")
    b, c = cand.shape
    recent = history.last(int(last_n))
    ok = (recent.values >= 0) & (recent.values < n)
    rows = np.repeat(np.arange(b, dtype=np.int64), recent.lengths())[ok]
    h = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, recent.values[ok])), shape=(b, n))
    s = sp.csr_matrix(h @ g)
    out = np.zeros((b, c), dtype=np.float32)
    valid = (cand >= 0) & (cand < n)
    if valid.any() and s.nnz:
        rr = np.broadcast_to(np.arange(b)[:, None], (b, c))[valid]
        s.sort_indices()
        out[valid] = np.asarray(s[rr, cand[valid]]).ravel()
    return out
