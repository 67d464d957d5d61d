"""Exact ranking metrics and beyond-accuracy metrics, vectorized over a batch of queries.

Shapes: ``B`` queries (users), ``K`` ranked positions, ``N`` items in the catalogue.

Low-level functions (one pure function per metric) take arrays that describe the ranked lists:

- ``gains (B, K) float``: relevance gain of the item at rank ``r = 1..K`` (column ``r - 1``); 0 for a
  non-relevant item and for padding.
- ``n_rel (B,) int``: number of relevant items of the query (items with gain > 0), retrieved or not.
- ``ideal (B, K') float``: the query's relevant gains sorted descending, truncated / zero-padded to ``K'``
  (used for the ideal DCG; ``K'`` may exceed ``K`` when the run is shorter than the cut-off).

Conventions (all checked against ``pytrec_eval``, the Python binding of ``trec_eval`` 9.x, in
``tests/test_metrics.py``):

- An item is relevant when its gain is > 0 (``trec_eval``'s default ``relevance_level`` 1 on integer
  judgements; judgements <= 0 are non-relevant and contribute no gain).
- A query without any relevant item gets 0 for every metric (``trec_eval`` returns 0, not NaN, for such
  queries). The offline evaluator drops these users before averaging; the ``recsys metrics`` command keeps
  them, like ``trec_eval``, when they have judgements.
- Ties: the functions take the ranking as given. The TREC reader (:mod:`offline_eval.trec`) produces
  ``trec_eval``'s order (score descending, then document id as a string, descending).
- A cut-off ``k`` larger than the number of ranked positions ``K`` is allowed: the missing positions count
  as non-relevant (``P@k`` still divides by ``k``; the ideal DCG still uses ``k`` positions).

The high-level API used by the rest of the code is :data:`METRICS`, :func:`parse_metric` and
:func:`compute`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Callable, Sequence

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# helpers


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"cut-off k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"cut-off k must be >= 1, got {k}")
    return int(k)


def _top(a: np.ndarray, k: int) -> np.ndarray:
    """The first ``min(k, K)`` columns of a ``(B, K)`` array (a view)."""
    return a[:, : min(k, a.shape[1])]


def _discounts(k: int) -> np.ndarray:
    """``1 / log2(r + 1)`` for ranks ``r = 1..k``."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` where ``den > 0``, else 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


# ----------------------------------------------------------------------------------------------------------
# ranking metrics (per query, shape (B,))


def ndcg_at_k(gains: np.ndarray, ideal: np.ndarray, k: int) -> np.ndarray:
    r"""Normalized discounted cumulative gain at ``k`` (``trec_eval`` ``ndcg_cut_k``), shape ``(B,)``.

    .. math::
        \mathrm{DCG@k} = \sum_{r=1}^{k} \frac{g_r}{\log_2(r + 1)}, \qquad
        \mathrm{nDCG@k} = \frac{\mathrm{DCG@k}}{\mathrm{IDCG@k}}

    with linear (graded) gains ``g_r`` as in ``trec_eval``, and IDCG@k the DCG@k of the query's judged
    relevant items in ideal (gain-descending) order, whether retrieved or not. ``IDCG == 0`` (no relevant
    item) gives 0.

    Järvelin & Kekäläinen, "Cumulated gain-based evaluation of IR techniques", ACM TOIS 20(4), 2002.

    Args:
        gains: ``(B, K)`` gain at each rank.
        ideal: ``(B, K')`` relevant gains sorted descending (``K' >= min(k, number of relevant)`` suffices).
        k: cut-off, >= 1.
    """
    k = _check_k(k)
    g = _top(gains, k)
    # elementwise product + row sum (not a BLAS matmul): the same value whatever the batch size
    dcg = (g * _discounts(g.shape[1])).sum(axis=1)
    i = _top(ideal, k)
    idcg = (i * _discounts(i.shape[1])).sum(axis=1)
    return _safe_div(dcg, idcg)


def mrr_at_k(gains: np.ndarray, k: int) -> np.ndarray:
    r"""Reciprocal rank of the first relevant item within the top ``k``, shape ``(B,)``.

    .. math:: \mathrm{RR@k} = 1 / \min\{r \le k : g_r > 0\}, \text{ or 0 if there is none}

    Equals ``trec_eval``'s ``recip_rank`` on the run cut at ``k``; the mean over queries is MRR@k.

    Voorhees, "The TREC-8 Question Answering Track Report", TREC 1999.
    """
    k = _check_k(k)
    hit = _top(gains, k) > 0
    if hit.shape[1] == 0:
        return np.zeros(hit.shape[0], dtype=np.float64)
    first = hit.argmax(axis=1)
    return np.where(hit.any(axis=1), 1.0 / (first + 1.0), 0.0)


def map_at_k(gains: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    r"""Average precision cut at ``k`` (``trec_eval`` ``map_cut_k``), shape ``(B,)``.

    .. math::
        \mathrm{AP@k} = \frac{1}{R} \sum_{r=1}^{k} \mathrm{P@r} \cdot [g_r > 0]

    where ``R = n_rel`` is the total number of relevant items of the query (not ``min(R, k)``); ``R == 0``
    gives 0. The mean over queries is MAP@k.

    Buckley & Voorhees, "Evaluating evaluation measure stability", SIGIR 2000; ``trec_eval`` ``m_map_cut.c``.
    """
    k = _check_k(k)
    # only the relevant positions contribute: walk them in row-major (= rank) order
    rows, cols = np.nonzero(_top(gains, k) > 0)
    B = gains.shape[0]
    first = np.zeros(B + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=B), out=first[1:])
    hits_so_far = np.arange(1, rows.size + 1, dtype=np.float64) - first[rows]
    ap_sum = np.bincount(rows, weights=hits_so_far / (cols + 1.0), minlength=B)
    return _safe_div(ap_sum, n_rel)


def recall_at_k(gains: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    r"""Recall at ``k`` (``trec_eval`` ``recall_k``), shape ``(B,)``.

    .. math:: \mathrm{R@k} = |\{r \le k : g_r > 0\}| / R, \quad 0 \text{ if } R = 0

    Manning, Raghavan & Schütze, "Introduction to Information Retrieval", 2008, section 8.3.
    """
    k = _check_k(k)
    return _safe_div(np.count_nonzero(_top(gains, k) > 0, axis=1), n_rel)


def precision_at_k(gains: np.ndarray, k: int) -> np.ndarray:
    r"""Precision at ``k`` (``trec_eval`` ``P_k``), shape ``(B,)``.

    .. math:: \mathrm{P@k} = |\{r \le k : g_r > 0\}| / k

    Divides by ``k`` even when fewer than ``k`` items were ranked, as ``trec_eval`` does.

    Manning, Raghavan & Schütze, "Introduction to Information Retrieval", 2008, section 8.4.
    """
    k = _check_k(k)
    return np.count_nonzero(_top(gains, k) > 0, axis=1) / float(k)


def hit_at_k(gains: np.ndarray, k: int) -> np.ndarray:
    r"""Hit rate at ``k`` (``trec_eval`` ``success_k``), shape ``(B,)``.

    .. math:: \mathrm{Hit@k} = [\exists\, r \le k : g_r > 0]

    Deshpande & Karypis, "Item-based top-N recommendation algorithms", ACM TOIS 22(1), 2004.
    """
    k = _check_k(k)
    return (_top(gains, k) > 0).any(axis=1).astype(np.float64)


METRICS: dict[str, Callable[..., np.ndarray]] = {
    "ndcg": ndcg_at_k,
    "mrr": mrr_at_k,
    "map": map_at_k,
    "recall": recall_at_k,
    "precision": precision_at_k,
    "hit": hit_at_k,
}

# which of the prepared inputs (gains, n_rel, ideal) each metric function takes, from its signature
_INPUTS = {name: tuple(p for p in inspect.signature(fn).parameters if p != "k") for name, fn in METRICS.items()}


def parse_metric(name: str) -> tuple[str, int]:
    """``"ndcg@10" -> ("ndcg", 10)``.

    Raises ValueError for an unknown metric (the message lists the supported ones), a missing or
    non-integer cut-off, or ``k <= 0``.
    """
    supported = ", ".join(f"{m}@k" for m in METRICS)
    if not isinstance(name, str):
        raise TypeError(f"metric name must be a string like 'ndcg@10', got {type(name).__name__}")
    base, sep, k_text = name.strip().partition("@")
    base = base.strip().lower()
    if base not in METRICS:
        raise ValueError(f"unknown metric {name!r}; supported: {supported}")
    if not sep:
        raise ValueError(f"metric {name!r} needs a cut-off, e.g. '{base}@10'; supported: {supported}")
    try:
        k = int(k_text.strip())
    except ValueError:
        raise ValueError(f"metric {name!r}: cut-off {k_text!r} is not an integer (expected e.g. '{base}@10')") from None
    if k <= 0:
        raise ValueError(f"metric {name!r}: cut-off k must be >= 1, got {k}")
    return base, k


# ----------------------------------------------------------------------------------------------------------
# gathering gains from a sparse qrels matrix


def _canonical_qrels(qrels: sp.spmatrix | sp.sparray, n_queries: int) -> sp.csr_matrix:
    if not sp.issparse(qrels):
        raise TypeError(f"qrels must be a scipy.sparse CSR matrix of gains, got {type(qrels).__name__}")
    q = sp.csr_matrix(qrels)  # no copy when already csr_matrix
    if q.shape[0] != n_queries:
        raise ValueError(f"qrels has {q.shape[0]} rows but ranked has {n_queries} queries (one row per query)")
    if q.data.size and not np.all(np.isfinite(q.data)):
        raise ValueError("qrels contains non-finite gains; expected gains > 0")
    if q.data.size and q.data.min() < 0:
        raise ValueError("qrels contains negative gains; expected gains > 0 (non-relevant items are left out)")
    if not q.has_canonical_format or (q.data.size and q.data.min() == 0):
        q = q.copy()
        q.sum_duplicates()  # sorts indices, merges duplicates
        q.eliminate_zeros()
    return q


def gather_gains(ranked: np.ndarray, qrels: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Look up the gain of every ranked item in its query's qrels row.

    Vectorized without a loop over queries, and searching the (few) relevant items among the ranked ones
    rather than the other way round: every ranked entry gets the composite key
    ``((b * (N + 1) + item) * K + r)`` (padding uses ``item = N``, which no judgement has); sorting each row
    of these keys sorts all of them, since rows are already in ascending ``b``. Each non-zero ``(b, item)``
    of ``qrels`` is then found with one ``np.searchsorted`` for ``(b * (N + 1) + item) * K``, and the rank
    ``r`` is read from the low digits of the key it lands on.

    Args:
        ranked: ``(B, K)`` int item indices in rank order, -1 = padding.
        qrels: ``(B, N)`` canonical csr (sorted indices, no duplicates) of gains > 0.

    Returns:
        ``gains (B, K) float64`` and ``n_rel (B,) int64``.

    Raises ValueError if an item index is outside ``[-1, N)`` or a row lists a relevant item twice.
    """
    B, K = ranked.shape
    N = qrels.shape[1]
    indptr = qrels.indptr.astype(np.int64, copy=False)
    n_rel = np.diff(indptr)
    gains = np.zeros((B, K), dtype=np.float64)
    nnz = qrels.indices.size
    if B == 0 or K == 0:
        return gains, n_rel
    lo, hi = int(ranked.min()), int(ranked.max())
    if lo < -1 or hi >= N:
        raise ValueError(f"ranked holds item index {lo if lo < -1 else hi}, outside [-1, {N}) (-1 = padding)")
    if nnz == 0:
        return gains, n_rel
    if float(B) * (N + 1) * K >= 2.0**62:
        raise ValueError(f"B * (N + 1) * K = {B} * {N + 1} * {K} is too large for int64 keys; evaluate in batches")
    base = np.arange(B, dtype=np.int64) * (N + 1)
    items = (np.where(ranked < 0, N, ranked) if lo < 0 else ranked).astype(np.int64, copy=True)
    items += base[:, None]
    items *= K
    items += np.arange(K, dtype=np.int64)
    items.sort(axis=1)
    flat = items.ravel()
    rel_rows = np.repeat(np.arange(B, dtype=np.int64), n_rel)
    lower = (base[rel_rows] + qrels.indices) * K  # smallest composite key of each judged (b, item)
    pos = np.searchsorted(flat, lower)
    np.minimum(pos, flat.size - 1, out=pos)
    landed = flat[pos]
    found = (landed >= lower) & (landed < lower + K)
    if found.any():
        nxt = np.minimum(pos[found] + 1, flat.size - 1)
        dup = (nxt != pos[found]) & (flat[nxt] < lower[found] + K)
        if dup.any():
            j = np.flatnonzero(found)[np.argmax(dup)]
            row, item = int(rel_rows[j]), int(qrels.indices[j])
            raise ValueError(f"ranked row {row} lists relevant item {item} more than once")
    rank = landed[found] % K
    gains[rel_rows[found], rank] = qrels.data[found]
    return gains, n_rel


def ideal_gains(qrels: sp.csr_matrix, k: int) -> np.ndarray:
    """``(B, k)`` each row's gains sorted descending, zero-padded / truncated to ``k`` (canonical csr)."""
    B = qrels.shape[0]
    indptr = qrels.indptr.astype(np.int64, copy=False)
    counts = np.diff(indptr)
    rows = np.repeat(np.arange(B, dtype=np.int64), counts)
    data = qrels.data
    top = int(data.max()) if data.size else 0
    if data.size and top < 2**16 and np.all(data == np.floor(data)):
        # integer gains (the usual graded relevance): one integer sort of row * (top + 1) + (top - gain)
        key = rows * (top + 1) + (top - data.astype(np.int64))
        key.sort()
        sorted_data = (top - key % (top + 1)).astype(np.float64)
    else:
        sorted_data = data[np.lexsort((-data, rows))]
    rank_in_row = np.arange(rows.size, dtype=np.int64) - indptr[rows]
    keep = rank_in_row < k
    ideal = np.zeros((B, k), dtype=np.float64)
    ideal[rows[keep], rank_in_row[keep]] = sorted_data[keep]
    return ideal


def compute(
    ranked: np.ndarray,
    qrels: sp.csr_matrix | sp.spmatrix | sp.sparray,
    metrics: Sequence[str],
    chunk_size: int = 4096,
) -> dict[str, np.ndarray]:
    """Per-query values of several ranking metrics.

    Works through the queries in blocks of ``chunk_size`` rows (a loop over blocks, vectorized inside), so
    that the temporaries stay in cache; the result does not depend on ``chunk_size``.

    Args:
        ranked: ``(B, K)`` int item indices in rank order, -1 = padding (fewer than K items). Items in a row
            must be distinct: a relevant item listed twice raises ValueError (a repeated non-relevant item is
            not detected; it only takes up a rank).
        qrels: ``(B, N)`` scipy.sparse matrix of gains > 0; row ``b`` holds query ``b``'s relevant items
            (explicit zeros are ignored; negative gains raise ValueError).
        metrics: names like ``"ndcg@10"`` (see :func:`parse_metric`).
        chunk_size: queries per block.

    Returns:
        ``{"ndcg@10": (B,) float64, ...}`` in the order given. A query without relevant items gets 0.
    """
    parsed = [(m, *parse_metric(m)) for m in metrics]
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be a 2-D (B, K) array of item indices, got shape {ranked.shape}")
    if ranked.dtype.kind not in "iu":
        raise TypeError(f"ranked must hold integer item indices, got dtype {ranked.dtype}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B = ranked.shape[0]
    q = _canonical_qrels(qrels, B)
    k_max = max((k for _, _, k in parsed), default=0)
    k_ideal = max((k for _, base, k in parsed if "ideal" in _INPUTS[base]), default=0)
    top = ranked[:, :k_max]
    out = {name: np.empty(B, dtype=np.float64) for name, _, _ in parsed}
    for start in range(0, B, chunk_size):
        stop = min(start + chunk_size, B)
        block = q[start:stop]
        try:
            gains, n_rel = gather_gains(top[start:stop], block)
        except ValueError as exc:
            raise _offset_row_error(exc, start) from None
        inputs: dict[str, np.ndarray] = {"gains": gains, "n_rel": n_rel}
        if k_ideal:
            inputs["ideal"] = ideal_gains(block, k_ideal)
        for name, base, k in parsed:
            out[name][start:stop] = METRICS[base](*(inputs[p] for p in _INPUTS[base]), k)
    return out


def _offset_row_error(exc: ValueError, offset: int) -> ValueError:
    """Re-number ``ranked row i`` in an error raised on a block that starts at row ``offset``."""
    import re

    msg = re.sub(r"ranked row (\d+)", lambda m: f"ranked row {int(m.group(1)) + offset}", str(exc))
    return ValueError(msg)


# ----------------------------------------------------------------------------------------------------------
# beyond-accuracy metrics


def _check_ranked(ranked: np.ndarray, n: int, what: str) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or ranked.dtype.kind not in "iu":
        raise ValueError(f"ranked must be a 2-D integer (B, K) array, got shape {ranked.shape} dtype {ranked.dtype}")
    if ranked.size and (ranked.min() < -1 or ranked.max() >= n):
        raise ValueError(f"ranked holds item indices outside [-1, {n}) (the length of {what})")
    return ranked


def coverage(ranked: np.ndarray, n_items: int) -> float:
    r"""Catalogue coverage: share of the ``N`` items that appear in at least one list.

    .. math:: \mathrm{Coverage} = |\bigcup_b L_b| / N

    Ge, Delgado-Battenfeld & Jannach, "Beyond accuracy: evaluating recommender systems by coverage and
    serendipity", RecSys 2010.

    Args:
        ranked: ``(B, K)`` item indices, -1 = padding.
        n_items: catalogue size ``N`` >= 1.
    """
    if n_items <= 0:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    ranked = _check_ranked(ranked, n_items, "the catalogue")
    seen = np.zeros(n_items, dtype=bool)
    seen[ranked[ranked >= 0]] = True
    return float(seen.sum() / n_items)


def _per_row_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return _safe_div(np.where(valid, values, 0.0).sum(axis=1), valid.sum(axis=1))


def novelty(ranked: np.ndarray, item_pop_prob: np.ndarray) -> np.ndarray:
    r"""Mean self-information of the listed items, per query, shape ``(B,)``.

    .. math:: \mathrm{Novelty}(L) = \frac{1}{|L|} \sum_{i \in L} -\log_2 p(i)

    with ``p(i)`` the probability that a random interaction is with item ``i`` (e.g. its share of the
    training interactions). Empty lists get 0. Items with ``p(i) == 0`` are an error (infinite information).

    Zhou et al., "Solving the apparent diversity-accuracy dilemma of recommender systems", PNAS 107(10), 2010.

    Args:
        ranked: ``(B, K)`` item indices, -1 = padding.
        item_pop_prob: ``(N,)`` probabilities in (0, 1].
    """
    p = np.asarray(item_pop_prob, dtype=np.float64)
    ranked = _check_ranked(ranked, p.shape[0], "item_pop_prob")
    valid = ranked >= 0
    pi = p[np.where(valid, ranked, 0)]
    if np.any((pi <= 0) & valid) or np.any((pi > 1) & valid):
        raise ValueError("item_pop_prob must be in (0, 1] for every listed item")
    info = -np.log2(np.where(valid, pi, 1.0))
    return _per_row_mean(info, valid)


def intra_list_diversity(ranked: np.ndarray, item_category: np.ndarray) -> np.ndarray:
    r"""Intra-list diversity with a categorical distance, per query, shape ``(B,)``.

    .. math:: \mathrm{ILD}(L) = \frac{2}{|L|(|L|-1)} \sum_{i < j \in L} [c(i) \ne c(j)]

    i.e. the share of item pairs in the list whose categories differ. Lists with fewer than two items get 0.
    Vectorized: each row's categories are sorted, and equal pairs are counted from run lengths.

    Smyth & McClave, "Similarity vs. diversity", ICCBR 2001; Ziegler et al., "Improving recommendation lists
    through topic diversification", WWW 2005.

    Args:
        ranked: ``(B, K)`` item indices, -1 = padding.
        item_category: ``(N,)`` non-negative integer category of each item.
    """
    cat = np.asarray(item_category)
    if cat.dtype.kind not in "iu" or (cat.size and cat.min() < 0):
        raise ValueError("item_category must hold non-negative integer categories")
    ranked = _check_ranked(ranked, cat.shape[0], "item_category")
    B, K = ranked.shape
    valid = ranked >= 0
    n = valid.sum(axis=1).astype(np.float64)
    # padding gets distinct negative categories so it never forms an equal pair
    c = np.where(valid, cat[np.where(valid, ranked, 0)].astype(np.int64), -1 - np.arange(K, dtype=np.int64))
    c.sort(axis=1)
    cols = np.broadcast_to(np.arange(K, dtype=np.int64), (B, K))
    starts = np.zeros((B, K), dtype=np.int64)
    if K > 1:
        starts[:, 1:] = np.where(c[:, 1:] != c[:, :-1], cols[:, 1:], 0)
    np.maximum.accumulate(starts, axis=1, out=starts)
    same_pairs = (cols - starts).sum(axis=1)  # each element paired with the equal ones before it
    total_pairs = n * (n - 1) / 2
    return _safe_div(total_pairs - same_pairs, total_pairs)


def avg_popularity(ranked: np.ndarray, item_counts: np.ndarray) -> np.ndarray:
    r"""Average recommendation popularity (ARP), per query, shape ``(B,)``.

    .. math:: \mathrm{ARP}(L) = \frac{1}{|L|} \sum_{i \in L} \mathrm{count}(i)

    with ``count(i)`` the number of training interactions of item ``i``. Empty lists get 0.

    Abdollahpouri, Burke & Mobasher, "Managing popularity bias in recommender systems with personalized
    re-ranking", FLAIRS 2019.
    """
    counts = np.asarray(item_counts, dtype=np.float64)
    ranked = _check_ranked(ranked, counts.shape[0], "item_counts")
    valid = ranked >= 0
    return _per_row_mean(counts[np.where(valid, ranked, 0)], valid)
