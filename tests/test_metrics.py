"""Ranking metrics: oracle tests against pytrec_eval (trec_eval 9.x), hand-computed cases, errors,
beyond-accuracy metrics against slow references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp

from offline_eval import metrics as M

pytrec_eval = pytest.importorskip("pytrec_eval")

CUTOFFS = (1, 3, 5, 10, 20, 50)  # 50 > the longest run (30): cut-offs past the end of the list


def _random_world(n_queries: int, seed: int):
    """Random qrels {qid: {doc: rel 0..3}} and run {qid: {doc: score}} with many tied scores.

    Some queries have no relevant judgement (all 0), some have no judgement at all, some retrieve nothing.
    """
    rng = np.random.default_rng(seed)
    qrels, run = {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        n_docs = 40
        docs = [f"d{j}" for j in rng.permutation(n_docs)]  # string ids: "d10" < "d9" as strings
        kind = rng.random()
        judged = docs[: rng.integers(0, 15)]
        if kind < 0.1:
            rels = {d: 0 for d in judged}  # judged, none relevant
        else:
            rels = {d: int(rng.integers(0, 4)) for d in judged}
        if kind > 0.97:
            rels = {}  # no judgements at all: pytrec_eval skips the query
        if rels:
            qrels[qid] = rels
        retrieved = list(rng.choice(docs, size=rng.integers(0, 31), replace=False))
        # few distinct values -> many ties; sometimes all tied
        levels = 1 if rng.random() < 0.1 else 4
        run[qid] = {d: float(rng.integers(0, levels)) / 2 for d in retrieved}
    return qrels, run


def _trec_order(docs: dict[str, float]) -> list[str]:
    """trec_eval's order, written independently of offline_eval.trec: score desc, then docid desc."""
    return [d for d, _ in sorted(docs.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def _to_arrays(qrels, run, qids):
    """Slow, obvious conversion to (ranked, qrels csr) for the queries ``qids``."""
    vocab: dict[str, int] = {}
    for q in qids:
        for d in itertools.chain(run.get(q, {}), qrels.get(q, {})):
            vocab.setdefault(d, len(vocab))
    K = max([len(run.get(q, {})) for q in qids] + [1])
    ranked = np.full((len(qids), K), -1, dtype=np.int64)
    rows, cols, vals = [], [], []
    for b, q in enumerate(qids):
        for r, d in enumerate(_trec_order(run.get(q, {}))):
            ranked[b, r] = vocab[d]
        for d, rel in qrels.get(q, {}).items():
            if rel > 0:
                rows.append(b), cols.append(vocab[d]), vals.append(float(rel))
    q = sp.csr_matrix((vals, (rows, cols)), shape=(len(qids), max(len(vocab), 1)))
    return ranked, q


@pytest.fixture(scope="module")
def world():
    qrels, run = _random_world(1200, seed=7)
    qids = [q for q in run if q in qrels]  # what pytrec_eval evaluates (an empty run dict included)
    assert len(qids) >= 1000
    ranked, q = _to_arrays(qrels, run, qids)
    return qrels, run, qids, ranked, q


def test_world_has_the_hard_cases(world):
    qrels, run, qids, ranked, q = world
    n_rel = np.diff(q.indptr)
    assert (n_rel == 0).sum() >= 50  # judged queries without a relevant document
    assert (ranked < 0).any()  # short lists
    assert (ranked < 0).all(axis=1).sum() >= 10  # queries that retrieved nothing
    tied = sum(len(set(run[x].values())) < len(run[x]) for x in qids)
    assert tied >= 500


@pytest.mark.parametrize(
    "ours, theirs",
    [("ndcg", "ndcg_cut"), ("map", "map_cut"), ("recall", "recall"), ("precision", "P"), ("hit", "success")],
)
def test_matches_pytrec_eval(world, ours, theirs):
    qrels, run, qids, ranked, q = world
    ev = pytrec_eval.RelevanceEvaluator(qrels, {f"{theirs}.{','.join(map(str, CUTOFFS))}"})
    ref = ev.evaluate(run)
    assert set(ref) == set(qids)
    got = M.compute(ranked, q, [f"{ours}@{k}" for k in CUTOFFS])
    for k in CUTOFFS:
        expected = np.array([ref[x][f"{theirs}_{k}"] for x in qids])
        np.testing.assert_allclose(got[f"{ours}@{k}"], expected, rtol=0, atol=1e-9, err_msg=f"{ours}@{k}")


def test_mrr_matches_recip_rank_on_truncated_run(world):
    qrels, run, qids, ranked, q = world
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    got = M.compute(ranked, q, [f"mrr@{k}" for k in CUTOFFS])
    for k in CUTOFFS:
        cut = {x: {d: run[x][d] for d in _trec_order(run[x])[:k]} for x in qids}
        ref = ev.evaluate(cut)
        expected = np.array([ref[x]["recip_rank"] for x in qids])
        np.testing.assert_allclose(got[f"mrr@{k}"], expected, rtol=0, atol=1e-9, err_msg=f"mrr@{k}")


def test_chunking_does_not_change_results(world):
    _, _, _, ranked, q = world
    names = ["ndcg@10", "map@20", "mrr@5", "recall@3", "precision@50", "hit@1"]
    a = M.compute(ranked, q, names)
    b = M.compute(ranked, q, names, chunk_size=7)
    for n in names:
        np.testing.assert_array_equal(a[n], b[n])


def test_hand_computed_ndcg_three_items():
    # ranked gains (3, 0, 2) of a query whose relevant gains are {3, 2, 1} (one relevant item not retrieved)
    ranked = np.array([[0, 1, 2]])
    q = sp.csr_matrix(np.array([[3.0, 0.0, 2.0, 1.0]]))
    dcg = 3 + 0 / math.log2(3) + 2 / 2
    idcg = 3 + 2 / math.log2(3) + 1 / 2
    got = M.compute(ranked, q, ["ndcg@3", "ndcg@1", "map@3", "recall@2", "precision@3", "mrr@3", "hit@3"])
    assert got["ndcg@3"][0] == pytest.approx(dcg / idcg, abs=1e-15)
    assert got["ndcg@1"][0] == pytest.approx(1.0)
    assert got["map@3"][0] == pytest.approx((1 / 1 + 2 / 3) / 3)  # divided by all 3 relevant items
    assert got["recall@2"][0] == pytest.approx(1 / 3)
    assert got["precision@3"][0] == pytest.approx(2 / 3)
    assert got["mrr@3"][0] == 1.0 and got["hit@3"][0] == 1.0


def test_precision_divides_by_k_and_padding_is_not_relevant():
    ranked = np.array([[2, -1, -1], [-1, -1, -1]])
    q = sp.csr_matrix(np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    got = M.compute(ranked, q, ["precision@5", "recall@5", "mrr@5", "ndcg@5"])
    np.testing.assert_allclose(got["precision@5"], [0.2, 0.0])
    np.testing.assert_allclose(got["recall@5"], [1.0, 0.0])
    np.testing.assert_allclose(got["mrr@5"], [1.0, 0.0])
    np.testing.assert_allclose(got["ndcg@5"], [1.0, 0.0])


def test_query_without_relevant_items_scores_zero():
    ranked = np.array([[0, 1]])
    q = sp.csr_matrix((1, 3))
    got = M.compute(ranked, q, [f"{m}@2" for m in M.METRICS])
    assert all(v[0] == 0.0 for v in got.values())


def test_low_level_functions_on_dense_inputs():
    gains = np.array([[0.0, 2.0, 1.0], [1.0, 0.0, 0.0]])
    n_rel = np.array([3, 1])
    ideal = np.array([[2.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(M.mrr_at_k(gains, 3), [0.5, 1.0])
    np.testing.assert_allclose(M.map_at_k(gains, n_rel, 3), [(1 / 2 + 2 / 3) / 3, 1.0])
    np.testing.assert_allclose(M.recall_at_k(gains, n_rel, 2), [1 / 3, 1.0])
    np.testing.assert_allclose(M.hit_at_k(gains, 1), [0.0, 1.0])
    d = 1 / np.log2([2, 3, 4])
    np.testing.assert_allclose(M.ndcg_at_k(gains, ideal, 3), [(gains[0] @ d) / (ideal[0] @ d), 1.0])


def test_parse_metric():
    assert M.parse_metric("ndcg@10") == ("ndcg", 10)
    assert M.parse_metric(" MAP@100 ") == ("map", 100)


@pytest.mark.parametrize("bad", ["foo@10", "ndcg_cut@10", "auc"])
def test_unknown_metric_lists_supported(bad):
    with pytest.raises(ValueError) as e:
        M.parse_metric(bad)
    for name in M.METRICS:
        assert f"{name}@k" in str(e.value)


@pytest.mark.parametrize("bad", ["ndcg@0", "ndcg@-3", "ndcg@x", "ndcg"])
def test_bad_cutoff(bad):
    with pytest.raises(ValueError, match="ndcg"):
        M.parse_metric(bad)
    with pytest.raises(ValueError):
        M.compute(np.zeros((1, 1), dtype=np.int64), sp.csr_matrix((1, 1)), [bad])


def test_low_level_k_must_be_positive():
    with pytest.raises(ValueError, match=">= 1"):
        M.precision_at_k(np.zeros((1, 2)), 0)


def test_input_errors():
    q = sp.csr_matrix(np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="outside"):
        M.compute(np.array([[2]]), q, ["ndcg@1"])
    with pytest.raises(ValueError, match="rows"):
        M.compute(np.array([[0], [1]]), q, ["ndcg@1"])
    with pytest.raises(TypeError, match="integer"):
        M.compute(np.array([[0.0]]), q, ["ndcg@1"])
    with pytest.raises(ValueError, match="negative"):
        M.compute(np.array([[0]]), sp.csr_matrix(np.array([[-1.0, 0.0]])), ["ndcg@1"])
    big = sp.csr_matrix(np.eye(6))
    ranked = np.arange(6)[:, None].repeat(2, axis=1)  # row 5 lists its relevant item 5 twice
    ranked[:5, 1] = (np.arange(5) + 1) % 6
    with pytest.raises(ValueError, match="row 5 lists relevant item 5 more than once"):
        M.compute(ranked, big, ["recall@2"], chunk_size=4)


def test_explicit_zeros_in_qrels_are_not_relevant():
    q = sp.csr_matrix((np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 2])), shape=(1, 2))
    got = M.compute(np.array([[0, 1]]), q, ["recall@1", "map@2"])
    assert got["recall@1"][0] == 0.0 and got["map@2"][0] == pytest.approx(0.5)


def test_non_integer_gains_use_general_ideal_sort():
    q = sp.csr_matrix(np.array([[0.5, 2.25, 1.0]]))
    got = M.compute(np.array([[0, 1, 2]]), q, ["ndcg@3"])
    d = 1 / np.log2([2, 3, 4])
    assert got["ndcg@3"][0] == pytest.approx((np.array([0.5, 2.25, 1.0]) @ d) / (np.array([2.25, 1.0, 0.5]) @ d))


# ------------------------------------------------------------------------------------------------------------
# beyond-accuracy metrics vs slow references


def test_beyond_accuracy_against_slow_reference():
    rng = np.random.default_rng(3)
    B, K, N = 60, 8, 30
    ranked = np.array([rng.permutation(N)[:K] for _ in range(B)])
    ranked[rng.random((B, K)) < 0.2] = -1  # padding anywhere
    ranked[0] = -1  # an empty list
    ranked[1, 1:] = -1  # a single item
    cat = rng.integers(0, 4, N)
    counts = rng.integers(1, 100, N).astype(float)
    prob = counts / counts.sum()

    def lists():
        for row in ranked:
            yield [i for i in row if i >= 0]

    ild_ref, nov_ref, arp_ref = [], [], []
    for items in lists():
        pairs = list(itertools.combinations(items, 2))
        ild_ref.append(sum(cat[a] != cat[b] for a, b in pairs) / len(pairs) if pairs else 0.0)
        nov_ref.append(np.mean([-math.log2(prob[i]) for i in items]) if items else 0.0)
        arp_ref.append(np.mean([counts[i] for i in items]) if items else 0.0)
    np.testing.assert_allclose(M.intra_list_diversity(ranked, cat), ild_ref, atol=1e-12)
    np.testing.assert_allclose(M.novelty(ranked, prob), nov_ref, atol=1e-12)
    np.testing.assert_allclose(M.avg_popularity(ranked, counts), arp_ref, atol=1e-12)
    assert M.coverage(ranked, N) == pytest.approx(len({i for row in lists() for i in row}) / N)


def test_beyond_accuracy_known_values():
    ranked = np.array([[0, 1, 2, 3], [0, 0 + 1, -1, -1]])
    cat = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(M.intra_list_diversity(ranked, cat), [4 / 6, 0.0])
    assert M.coverage(np.array([[0, -1]]), 4) == 0.25
    np.testing.assert_allclose(M.novelty(np.array([[0, 1]]), np.array([0.5, 0.25])), [1.5])
    with pytest.raises(ValueError, match="item_pop_prob"):
        M.novelty(np.array([[0]]), np.array([0.0]))
    with pytest.raises(ValueError, match="outside"):
        M.avg_popularity(np.array([[5]]), np.ones(3))
