"""Item graph, PageRank, personalized PageRank and the graph candidate source.

Oracles: networkx.pagerank (independent implementation) for PageRank / PPR; slow pure-Python references for
the item-graph builder and the co-engagement feature; the power method for forward push.
"""

from __future__ import annotations

from collections import defaultdict

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from recsys.configlib import ConfigError, from_dict
from recsys.graph import (
    GraphConfig,
    GraphSource,
    PageRankConvergenceError,
    PPRConfig,
    Transition,
    build_item_graph,
    co_engagement,
    load_graph,
    pagerank,
    personalized_pagerank,
    recency_weights,
    save_graph,
    top_ppr,
)
from recsys.graph.pagerank import _Pusher
from recsys.types import Ragged, Requests

# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------


def random_digraph(seed: int, n: int = 40, density: float = 0.08, self_loops: bool = True) -> sp.csr_matrix:
    """Random weighted directed graph with some dangling nodes (rows emptied) and optional self-loops."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n, n)) < density
    if not self_loops:
        np.fill_diagonal(mask, False)
    else:
        mask[np.arange(0, n, 7), np.arange(0, n, 7)] = True
    dangling = rng.choice(n, size=max(2, n // 8), replace=False)
    mask[dangling] = False
    w = np.where(mask, rng.uniform(0.1, 5.0, (n, n)), 0.0)
    return sp.csr_matrix(w)


def to_nx(adj: sp.csr_matrix) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(range(adj.shape[0]))
    coo = adj.tocoo()
    g.add_weighted_edges_from(zip(coo.row.tolist(), coo.col.tolist(), coo.data.tolist()))
    return g


def nx_vector(d: dict, n: int) -> np.ndarray:
    return np.array([d[i] for i in range(n)])


# ------------------------------------------------------------------------------------------------------
# PageRank vs networkx
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("variant", ["plain", "personalization", "dangling", "both", "alpha"])
def test_pagerank_matches_networkx(seed: int, variant: str) -> None:
    adj = random_digraph(seed, n=30 + 10 * seed, self_loops=seed % 2 == 0)
    n = adj.shape[0]
    assert Transition.from_adjacency(adj).dangling.any()  # the dangling path is exercised
    rng = np.random.default_rng(100 + seed)
    pers = rng.random(n) * (rng.random(n) < 0.5) if variant in ("personalization", "both") else None
    if pers is not None:
        pers[0] = 1.0  # at least one positive entry
    dang = rng.random(n) * (rng.random(n) < 0.4) if variant in ("dangling", "both") else None
    if dang is not None:
        dang[1] = 0.5
    alpha = 0.6 if variant == "alpha" else 0.85
    ref = nx.pagerank(
        to_nx(adj),
        alpha=alpha,
        personalization=None if pers is None else dict(enumerate(pers.tolist())),
        dangling=None if dang is None else dict(enumerate(dang.tolist())),
        tol=1e-10,
        max_iter=200,
    )
    got = pagerank(adj, damping=alpha, tol=1e-10, max_iter=200, personalization=pers, dangling=dang)
    assert got.shape == (n,) and got.dtype == np.float64
    np.testing.assert_allclose(got, nx_vector(ref, n), atol=1e-6, rtol=0)
    assert abs(got.sum() - 1.0) < 1e-6


@pytest.mark.parametrize("tol", [1e-3, 1e-5])
def test_pagerank_stops_at_the_same_iterate_as_networkx(tol: float) -> None:
    """With a loose tol the answer depends on the stopping rule (L1 change < N * tol): it must be networkx's."""
    adj = random_digraph(6, n=45)
    n = adj.shape[0]
    ref = nx_vector(nx.pagerank(to_nx(adj), tol=tol), n)
    tighter = nx_vector(nx.pagerank(to_nx(adj), tol=tol / 50), n)
    assert np.abs(ref - tighter).max() > 1e-9  # the stopping iterate is distinguishable
    np.testing.assert_allclose(pagerank(adj, tol=tol), ref, atol=1e-13, rtol=0)


def test_pagerank_raises_when_not_converged() -> None:
    adj = random_digraph(5)
    with pytest.raises(nx.PowerIterationFailedConvergence):
        nx.pagerank(to_nx(adj), tol=1e-12, max_iter=3)
    with pytest.raises(PageRankConvergenceError, match="max_iter=3"):
        pagerank(adj, tol=1e-12, max_iter=3)


def test_pagerank_empty_graph() -> None:
    n = 6
    empty = sp.csr_matrix((n, n))
    np.testing.assert_allclose(pagerank(empty), np.full(n, 1 / n), atol=1e-12)
    pers = np.array([0, 1, 0, 3, 0, 0], dtype=float)
    np.testing.assert_allclose(pagerank(empty, personalization=pers), pers / 4, atol=1e-12)
    assert pagerank(sp.csr_matrix((0, 0))).shape == (0,)
    # networkx agrees on the edgeless graph
    ref = nx.pagerank(to_nx(empty), personalization=dict(enumerate(pers.tolist())))
    np.testing.assert_allclose(pagerank(empty, personalization=pers), nx_vector(ref, n), atol=1e-9)


def test_pagerank_rejects_bad_input() -> None:
    adj = random_digraph(0)
    with pytest.raises(ValueError, match="square"):
        pagerank(sp.csr_matrix((3, 4)))
    neg = adj.copy()
    neg.data[0] = -1.0
    with pytest.raises(ValueError, match=">= 0"):
        pagerank(neg)
    with pytest.raises(ValueError, match="personalization"):
        pagerank(adj, personalization=np.zeros(adj.shape[0]))
    with pytest.raises(ValueError, match="damping"):
        pagerank(adj, damping=1.0)


# ------------------------------------------------------------------------------------------------------
# Personalized PageRank
# ------------------------------------------------------------------------------------------------------


def test_ppr_batch_matches_networkx_per_user() -> None:
    adj = random_digraph(11, n=50)
    n = adj.shape[0]
    g = to_nx(adj)
    seeds = Ragged.from_lists([[3], [0, 5, 9], [], [7, 7, 2], [dangler := int(np.flatnonzero(adj.getnnz(1) == 0)[0])]])
    weights = np.array([1.0, 0.5, 2.0, 1.0, 1.0, 3.0, 1.0, 2.0])
    for sw in (None, weights):
        got = personalized_pagerank(adj, seeds, damping=0.85, tol=1e-10, max_iter=200, seed_weights=sw)
        assert isinstance(got, np.ndarray) and got.shape == (len(seeds), n)
        global_pr = nx_vector(nx.pagerank(g, tol=1e-10, max_iter=200), n)
        w = np.ones(len(seeds.values)) if sw is None else sw
        for b in range(len(seeds)):
            row = seeds.row(b)
            if len(row) == 0:
                np.testing.assert_allclose(got[b], global_pr, atol=1e-6)  # cold row: global PageRank
                continue
            pers = defaultdict(float)
            for item, wt in zip(row.tolist(), w[seeds.indptr[b] : seeds.indptr[b + 1]].tolist()):
                pers[item] += wt
            ref = nx.pagerank(g, alpha=0.85, personalization=dict(pers), tol=1e-10, max_iter=200)
            np.testing.assert_allclose(got[b], nx_vector(ref, n), atol=1e-6)
    assert dangler in seeds.values


def test_ppr_zero_weight_seeds_fall_back_to_global() -> None:
    adj = random_digraph(4)
    seeds = Ragged.from_lists([[1, 2], [3]])
    got = personalized_pagerank(adj, seeds, seed_weights=np.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(got[0], pagerank(adj), atol=1e-12)
    assert got[1].argmax() == 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_push_bounds_against_power(seed: int) -> None:
    adj = random_digraph(20 + seed, n=60, density=0.06)
    t = Transition.from_adjacency(adj)
    seeds = Ragged.from_lists([[0], [4, 8, 15], [int(np.flatnonzero(t.dangling)[0]), 1]])
    exact = personalized_pagerank(t, seeds, tol=1e-13, max_iter=500)
    for eps in (1e-2, 1e-3, 1e-4):
        push = personalized_pagerank(t, seeds, method="push", eps=eps)
        assert sp.issparse(push) and push.shape == exact.shape
        gap = exact - push.toarray()
        assert gap.min() > -1e-11  # push never overestimates
        bound = eps * np.maximum(t.out_degree, 1).sum()
        assert (gap.sum(axis=1) <= bound + 1e-11).all()
        # the invariant: the L1 gap is exactly the residual mass left unpushed
        pusher = _Pusher(t, 0.85, eps)
        for b in range(len(seeds)):
            row = seeds.row(b)
            nodes, q, residual = pusher.run(row, np.full(len(row), 1.0 / len(row)))
            np.testing.assert_allclose(gap[b].sum(), residual, atol=1e-10)
            np.testing.assert_array_equal(push[b].indices, nodes)
    tiny = personalized_pagerank(t, seeds, method="push", eps=1e-10)
    np.testing.assert_allclose(tiny.toarray(), exact, atol=1e-6)


def test_push_reuses_buffers_cleanly() -> None:
    """Running users one after another through one pusher gives the same as a fresh pusher per user."""
    adj = random_digraph(8, n=50)
    t = Transition.from_adjacency(adj)
    shared = _Pusher(t, 0.85, 1e-4)
    for s in ([1, 2], [30], [5, 5, 6]):
        w = np.full(len(s), 1.0 / len(s))
        a = shared.run(np.array(s), w)
        b = _Pusher(t, 0.85, 1e-4).run(np.array(s), w)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1], rtol=0, atol=0)
    assert not shared.r.any() and not shared.q.any()


def test_batched_push_is_bitwise_the_per_user_reference(monkeypatch) -> None:
    """personalized_pagerank pushes many users at once (_BatchPusher); every row equals the one-user-at-a-time
    reference (_Pusher) bit for bit: same nodes, same float64 estimates. Seed sets with repeats, weights,
    dangling seeds (their mass returns to the seeds), cold rows between warm ones, and blocks of 1, 3 and all
    rows (the flat state split across several calls)."""
    import importlib

    pr = importlib.import_module("recsys.graph.pagerank")  # (recsys.graph.pagerank the attribute is the function)
    rng = np.random.default_rng(7)
    adj = random_digraph(21, n=120, density=0.04)
    t = Transition.from_adjacency(adj)
    dangling = np.flatnonzero(t.dangling)
    assert len(dangling) >= 2  # the dangling branch is exercised
    lists = [list(rng.integers(0, 120, rng.integers(1, 8))) for _ in range(25)]
    lists[3] = [int(dangling[0]), int(dangling[1]), 5]
    lists[4], lists[10] = [], []  # cold rows: the global PageRank
    lists[7] = [9, 9, 9, 2]
    seeds = Ragged.from_lists(lists)
    weights = rng.random(len(seeds.values)) + 0.1
    for eps in (1e-3, 1e-5):
        for block in (120, 3 * 120, 1 << 22):
            monkeypatch.setattr(pr, "_PUSH_BLOCK_ELEMENTS", block)
            got = personalized_pagerank(t, seeds, method="push", eps=eps, seed_weights=weights)
            ref = _Pusher(t, 0.85, eps)
            for b, row in enumerate(lists):
                if not row:
                    continue
                w = weights[seeds.indptr[b] : seeds.indptr[b + 1]]
                nodes, q, _ = ref.run(np.asarray(row), w / w.sum())
                np.testing.assert_array_equal(got[b].indices, nodes)
                assert np.array_equal(got[b].data, q), (eps, block, b)  # bitwise, not to a tolerance

def test_push_cold_row_is_sparsified_global_pagerank() -> None:
    adj = random_digraph(9)
    gpr = pagerank(adj)
    eps = float(np.median(gpr))
    push = personalized_pagerank(adj, Ragged.from_lists([[], [1]]), method="push", eps=eps)
    keep = np.flatnonzero(gpr >= eps)
    np.testing.assert_array_equal(push[0].indices, keep)
    np.testing.assert_allclose(push[0].data, gpr[keep])


def test_ppr_empty_graph_and_seed_errors() -> None:
    n = 5
    empty = sp.csr_matrix((n, n))
    seeds = Ragged.from_lists([[2], [], [1, 3]])
    power = personalized_pagerank(empty, seeds)
    np.testing.assert_allclose(power[0], np.eye(n)[2], atol=1e-12)  # all mass stays on the seed
    np.testing.assert_allclose(power[1], np.full(n, 1 / n), atol=1e-12)
    np.testing.assert_allclose(power[2], (np.eye(n)[1] + np.eye(n)[3]) / 2, atol=1e-12)
    push = personalized_pagerank(empty, seeds, method="push", eps=1e-9)
    np.testing.assert_allclose(push.toarray()[[0, 2]], power[[0, 2]], atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, N=5\)"):
        personalized_pagerank(empty, Ragged.from_lists([[5]]))
    with pytest.raises(ValueError, match="method"):
        personalized_pagerank(empty, seeds, method="magic")


def test_recency_weights() -> None:
    h = Ragged.from_lists([[4, 5, 6], [], [7]])
    np.testing.assert_allclose(recency_weights(h, half_life=1.0), [0.25, 0.5, 1.0, 1.0])


# ------------------------------------------------------------------------------------------------------
# top_ppr and the candidate source
# ------------------------------------------------------------------------------------------------------


def test_top_ppr_dense_and_sparse_agree() -> None:
    rng = np.random.default_rng(3)
    b, n, k = 6, 25, 7
    dense = rng.random((b, n)) * (rng.random((b, n)) < 0.3)
    dense[0, [2, 5, 9]] = 0.5  # ties: lower index first
    dense[1] = 0.0  # nothing reachable: all padding
    exclude = Ragged.from_lists([[5], [], [0, 1, 2, 3], [], [24], list(range(n))])
    i_d, s_d = top_ppr(dense, k, exclude)
    r_nz, c_nz = np.nonzero(dense)
    r_nz, c_nz = np.r_[r_nz, 1], np.r_[c_nz, 3]
    sparse = sp.csr_matrix((dense[r_nz, c_nz], (r_nz, c_nz)), shape=(b, n))
    assert sparse[1, 3] == 0 and sparse.nnz == np.count_nonzero(dense) + 1  # an explicit zero: never returned
    i_s, s_s = top_ppr(sparse, k, exclude)
    np.testing.assert_array_equal(i_d, i_s)
    np.testing.assert_allclose(s_d, s_s)
    assert (i_d[1] == -1).all() and np.isnan(s_d[1]).all() and (i_d[5] == -1).all()
    for row in range(b):
        got = i_d[row][i_d[row] >= 0]
        assert not set(got.tolist()) & set(exclude.row(row).tolist())
        eligible = [j for j in range(n) if dense[row, j] > 0 and j not in set(exclude.row(row).tolist())]
        expected = sorted(eligible, key=lambda j: (-dense[row, j], j))[:k]
        assert got.tolist() == expected


def two_cliques(n_half: int = 6) -> sp.csr_matrix:
    blk = np.ones((n_half, n_half)) - np.eye(n_half)
    return sp.csr_matrix(sp.block_diag([blk, 2 * blk]))


@pytest.mark.parametrize("method", ["power", "push"])
def test_graph_source_known_answer_and_round_trip(method: str, tmp_path) -> None:
    adj = two_cliques(6)
    n = adj.shape[0]
    src = GraphSource(adj, PPRConfig(last_n=2, method=method, eps=1e-8)).fit()
    history = Ragged.from_lists([[0, 1], [7], [], [0, 1, 8], [n]])  # last row: an OOV item (== N) only
    req = Requests(
        users=np.arange(5), timestamps=np.zeros(5), history=history, exclude=history,
    )
    items, scores = src.candidates(req, k=8)
    assert items.shape == (5, 8) and items.dtype == np.int64 and scores.shape == (5, 8)
    # user 0 engaged items 0, 1 of clique A: candidates are the rest of clique A, nothing of clique B
    assert set(items[0][items[0] >= 0].tolist()) == {2, 3, 4, 5}
    assert (items[0][4:] == -1).all() and np.isnan(scores[0][4:]).all()
    assert set(items[1][items[1] >= 0].tolist()) == set(range(6, 12)) - {7}
    # cold user (and the user whose only item is unknown): global PageRank, excluding nothing
    gpr = pagerank(adj)
    expected_cold = sorted(range(n), key=lambda j: (-gpr[j], j))[:8]
    assert items[2].tolist() == expected_cold
    assert items[4].tolist() == expected_cold
    # user 3: last_n = 2 seeds are items 1 and 8 (item 0 is too old); items 0, 1, 8 excluded
    assert not {0, 1, 8} & set(items[3].tolist())
    assert (np.diff(scores[0][:4]) <= 0).all()

    src.save(tmp_path / "g")
    back = GraphSource.load(tmp_path / "g")
    assert back.cfg == src.cfg
    items2, scores2 = back.candidates(req, k=8)
    np.testing.assert_array_equal(items, items2)
    np.testing.assert_allclose(scores, scores2)


def test_graph_source_fit_log_and_recency_seeds() -> None:
    users, items, times = random_log(2)
    n = 15
    cfg = PPRConfig(last_n=3, method="power", recency_half_life=1.0)
    src = GraphSource(cfg=cfg).fit_log(users, items, times, n, GraphConfig(top_m=5))
    graph = build_item_graph(users, items, times, n, GraphConfig(top_m=5))
    assert (src.graph != graph).nnz == 0
    history = Ragged.from_lists([[1, 2, 3, 4], [5, -1, n, 6], [n]])
    got = src.ppr(history)
    # expected: the last 3 entries, out-of-catalogue ones dropped, weights 0.5 ** age (age 0 = most recent)
    seeds = Ragged.from_lists([[2, 3, 4], [6], []])
    weights = np.array([0.25, 0.5, 1.0, 1.0])
    exp = personalized_pagerank(graph, seeds, seed_weights=weights, tol=cfg.tol)
    np.testing.assert_allclose(got, exp, atol=1e-12)
    uniform = GraphSource(graph, PPRConfig(last_n=3, method="power")).fit().ppr(history)
    assert got[0, 4] > uniform[0, 4] and got[0, 2] < uniform[0, 2]  # recency moves mass to the newest seed


def test_graph_source_requires_fit() -> None:
    src = GraphSource(two_cliques())
    req = Requests(users=[0], timestamps=[0], history=Ragged.from_lists([[0]]))
    with pytest.raises(RuntimeError, match="fit"):
        src.candidates(req, 3)


# ------------------------------------------------------------------------------------------------------
# Item graph vs a slow reference
# ------------------------------------------------------------------------------------------------------


def reference_graph(users, items, times, n, cfg: GraphConfig, links_src=None, links_dst=None) -> np.ndarray:
    r = len(users)
    order = sorted(range(r), key=lambda i: (users[i], times[i], i))
    w = defaultdict(float)
    for pos, i in enumerate(order):
        for lag in range(1, cfg.max_gap_events + 1):
            if pos + lag >= r:
                break
            j = order[pos + lag]
            if users[j] != users[i]:
                break
            a, b = int(items[i]), int(items[j])
            dt = int(times[j]) - int(times[i])
            if cfg.max_gap_seconds is not None and dt > cfg.max_gap_seconds:
                continue
            if a == b or not (0 <= a < n and 0 <= b < n):
                continue
            x = cfg.event_decay ** (lag - 1)
            if cfg.time_half_life_seconds is not None:
                x *= 0.5 ** (dt / cfg.time_half_life_seconds)
            w[(a, b)] += x
            if cfg.symmetric:
                w[(b, a)] += x
    out = np.zeros((n, n))
    rows = defaultdict(list)
    for (a, b), x in w.items():
        if x >= cfg.min_weight and x > 0:
            rows[a].append((b, x))
    for a, nbrs in rows.items():
        nbrs.sort(key=lambda e: (-e[1], e[0]))
        for b, x in nbrs if cfg.top_m is None else nbrs[: cfg.top_m]:
            out[a, b] = x
    if links_src is not None and cfg.link_weight > 0:
        pairs = {(int(s), int(d)) for s, d in zip(links_src, links_dst) if s != d}
        if cfg.symmetric:
            pairs |= {(d, s) for s, d in pairs}
        for s, d in pairs:
            out[s, d] += cfg.link_weight
    return out


def random_log(seed: int, n_users=12, n_items=15, n_events=250):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_events)
    items = rng.integers(0, n_items + 1, n_events)  # n_items = the OOV index: keeps its place, makes no edge
    times = rng.integers(0, 40 * 86400, n_events)
    times[:10] = times[10]  # ties in time: input order decides
    return users, items, times


GRAPH_CONFIGS = [
    GraphConfig(),
    GraphConfig(max_gap_events=1, max_gap_seconds=None, top_m=None),
    GraphConfig(max_gap_events=3, top_m=2, symmetric=False),  # integer weights: many ties at the cut
    GraphConfig(max_gap_events=4, top_m=None, event_decay=0.5, time_half_life_seconds=3 * 86400.0),
    GraphConfig(max_gap_events=2, max_gap_seconds=2 * 86400, top_m=3, min_weight=2.0, link_weight=0.5),
    GraphConfig(link_weight=0.0, top_m=1),
]


@pytest.mark.parametrize("cfg", GRAPH_CONFIGS, ids=lambda c: f"gap{c.max_gap_events}-m{c.top_m}-s{c.symmetric}")
@pytest.mark.parametrize("seed", [0, 1])
def test_build_item_graph_matches_reference(cfg: GraphConfig, seed: int) -> None:
    users, items, times = random_log(seed)
    n = 15
    rng = np.random.default_rng(50 + seed)
    ls = rng.integers(0, n, 12)
    ld = rng.integers(0, n, 12)
    ls[0], ld[0] = 3, 3  # a self-link: ignored
    ls[1], ld[1] = ls[2], ld[2]  # a duplicate link: counted once
    got = build_item_graph(users, items, times, n, cfg, ls, ld)
    assert isinstance(got, sp.csr_matrix) and got.dtype == np.float32 and got.shape == (n, n)
    assert got.has_sorted_indices
    ref = reference_graph(users, items, times, n, cfg, ls, ld)
    np.testing.assert_allclose(got.toarray(), ref, rtol=1e-6, atol=1e-6)
    assert (got.diagonal() == 0).all()
    if cfg.top_m is not None:
        co = build_item_graph(users, items, times, n, cfg)  # without links: degree <= top_m
        assert co.getnnz(axis=1).max() <= cfg.top_m
    if cfg.link_weight > 0:
        for s, d in zip(ls[2:], ld[2:]):
            if s != d:
                assert got[s, d] >= cfg.link_weight - 1e-6


@pytest.mark.parametrize("top_m", [1, 3, 8])
def test_top_m_per_row_matches_sort(top_m: int) -> None:
    """Rows shorter and longer than top_m, integer weights (ties at the cut: lower column kept)."""
    from recsys.graph.item_graph import _top_m_per_row

    rng = np.random.default_rng(top_m)
    dense = rng.integers(1, 4, (30, 40)) * (rng.random((30, 40)) < rng.random((30, 1)) * 0.5)
    got = _top_m_per_row(sp.csr_matrix(dense.astype(float)), top_m)
    lengths = (dense > 0).sum(axis=1)
    assert (lengths < top_m).any() and (lengths > top_m).any()
    expected = np.zeros_like(dense)
    for i in range(dense.shape[0]):
        cols = sorted(np.flatnonzero(dense[i]).tolist(), key=lambda j: (-dense[i, j], j))[:top_m]
        expected[i, cols] = dense[i, cols]
    np.testing.assert_array_equal(got.toarray(), expected)
    assert (np.diff(got.indptr) == np.minimum(lengths, top_m)).all()
    assert got.has_sorted_indices and all(np.all(np.diff(got[i].indices) > 0) for i in range(got.shape[0]))


def test_build_item_graph_gap_limits_are_inclusive() -> None:
    """Engagements exactly max_gap_seconds / max_gap_events apart are co-engaged; one more is not."""
    users = np.zeros(5, dtype=np.int64)
    items = np.array([0, 1, 2, 3, 4])
    times = np.array([0, 100, 200, 301, 302])
    g = build_item_graph(users, items, times, 5, GraphConfig(max_gap_events=2, max_gap_seconds=100, top_m=None))
    expected = {(0, 1), (1, 2), (3, 4)}  # 100 s apart: in; 2-3 (101 s), 2-4 (102 s), lag-2 pairs (>= 200 s): out
    got = {(int(a), int(b)) for a, b in zip(*g.nonzero()) if a < b}
    assert got == expected
    g = build_item_graph(users, items, times, 5, GraphConfig(max_gap_events=2, max_gap_seconds=None, top_m=None))
    got = {(int(a), int(b)) for a, b in zip(*g.nonzero()) if a < b}
    assert got == {(0, 1), (1, 2), (2, 3), (3, 4), (0, 2), (1, 3), (2, 4)}


def test_build_item_graph_input_errors() -> None:
    users, items, times = random_log(0)
    with pytest.raises(ValueError, match="one entry per engagement"):
        build_item_graph(users[:-1], items, times, 15)
    with pytest.raises(TypeError, match="integers"):
        build_item_graph(users, items.astype(float), times, 15)
    with pytest.raises(ValueError, match="outside the catalogue"):
        build_item_graph(users, items, times, 15, GraphConfig(), np.array([0]), np.array([15]))
    with pytest.raises(ValueError, match="both"):
        build_item_graph(users, items, times, 15, GraphConfig(), np.array([0]), None)
    empty = build_item_graph(np.zeros(0, int), np.zeros(0, int), np.zeros(0, int), 4)
    assert empty.shape == (4, 4) and empty.nnz == 0


def test_graph_config_validation() -> None:
    with pytest.raises(ConfigError, match="max_gap_events"):
        GraphConfig(max_gap_events=0)
    with pytest.raises(ConfigError, match="top_m"):
        GraphConfig(top_m=0)
    with pytest.raises(ConfigError, match="event_decay"):
        GraphConfig(event_decay=1.5)
    with pytest.raises(ConfigError, match="graph.*unknown key"):
        from_dict(GraphConfig, {"top_n": 3}, prefix="graph")
    assert from_dict(GraphConfig, {"top_m": None, "max_gap_seconds": 60}).max_gap_seconds == 60
    assert from_dict(PPRConfig, {"method": "power"}).method.value == "power"
    with pytest.raises(ConfigError, match="damping"):
        PPRConfig(damping=1.0)


# ------------------------------------------------------------------------------------------------------
# co-engagement feature, persistence
# ------------------------------------------------------------------------------------------------------


def test_co_engagement_matches_loop() -> None:
    users, items, times = random_log(3)
    n = 15
    graph = build_item_graph(users, items, times, n, GraphConfig(symmetric=False, top_m=4))
    rng = np.random.default_rng(7)
    history = Ragged.from_lists([rng.integers(0, n, rng.integers(0, 9)).tolist() for _ in range(10)] + [[n, 2]])
    cands = rng.integers(-1, n + 1, (11, 6))
    last_n = 3
    got = co_engagement(graph, history, last_n, cands)
    dense = graph.toarray()
    assert got.shape == cands.shape and got.dtype == np.float32
    for b in range(len(history)):
        recent = history.row(b)[-last_n:]
        for c in range(cands.shape[1]):
            j = cands[b, c]
            exp = 0.0 if not 0 <= j < n else sum(dense[h, j] for h in recent if 0 <= h < n)
            assert got[b, c] == pytest.approx(exp, rel=1e-6, abs=1e-6)
    assert got.any()  # the fixture is not all zeros


def test_save_load_round_trip(tmp_path) -> None:
    users, items, times = random_log(1)
    graph = build_item_graph(users, items, times, 15)
    paths = save_graph(tmp_path / "sub" / "g", graph)
    assert [p.name for p in paths] == ["g.indptr.npy", "g.indices.npy", "g.data.npy", "g.shape.npy"]
    back = load_graph(tmp_path / "sub" / "g")
    assert back.shape == graph.shape and back.dtype == np.float32
    assert (back != graph).nnz == 0
    np.save(tmp_path / "sub" / "g.indices.npy", np.full(graph.nnz, 99, dtype=np.int64))
    with pytest.raises(ValueError, match="indices"):
        load_graph(tmp_path / "sub" / "g")
    with pytest.raises(FileNotFoundError, match="missing"):
        load_graph(tmp_path / "nothing")
