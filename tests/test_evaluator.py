"""The full-ranking evaluator: relevance construction (no leakage), metrics of known systems, segments, funnel
recall, the oracle, and the Ray backend against the local one."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from offline_eval.evaluator import (
    EvalData,
    OracleSystem,
    evaluate,
    head_items,
    metric_names,
    restrict_columns,
    set_recall,
)
from recsys.configlib import EvalConfig, SplitConfig
from recsys.data.catalog import Catalog
from recsys.data.schema import Dataset, col, make_schema
from recsys.data.split import split_dataset
from recsys.types import Ragged, Requests, Results, top_k

# ----------------------------------------------------------------------------------------------------------
# a hand-built world with a known answer


def toy_dataset() -> Dataset:
    """10 items i0..i9 (categories a/b), 5 users; train window t < 100, test window t >= 100.

    train: u1 clicks i0, i1; u2 clicks i2; u3 clicks i0; u4 sees i3 (no click)
    test:  u1 clicks i0 (seen before: removed), i5 liked then i5 again not liked (gain max(2, 1) = 2)
           u2 clicks i2 only (seen before -> u2 dropped); u3 clicks i6; u4 sees i9 (no click -> dropped)
           u5 (cold: not in train) clicks i7 and i8
    """
    rows = [
        ("u1", "i0", 10, 1, 0, 3), ("u1", "i1", 20, 1, 0, 4), ("u2", "i2", 30, 1, 1, 5), ("u3", "i0", 40, 1, 0, 6),
        ("u4", "i3", 50, 0, 0, 7),
        ("u3", "i9", 105, 0, 0, 11),  # u3's first test event is an impression (request time 105, hour 11)
        ("u1", "i0", 110, 1, 0, 12), ("u1", "i5", 120, 1, 1, 13), ("u2", "i2", 130, 1, 0, 14),
        ("u5", "i7", 140, 1, 0, 15), ("u3", "i6", 150, 1, 0, 16), ("u4", "i9", 160, 0, 0, 17),
        ("u1", "i5", 170, 1, 0, 18), ("u5", "i8", 180, 1, 0, 19),
    ]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "click", "like", "hour"])
    inter["timestamp"] = inter["timestamp"].astype(np.int64)
    items = pd.DataFrame({"item_id": [f"i{j}" for j in range(10)], "category": list("aabbaabbab")})
    schema = make_schema(
        "toy",
        interactions={
            "user_id": col("user_id"), "item_id": col("item_id"), "timestamp": col("timestamp"),
            "click": col("label", "binary"), "like": col("label", "binary"), "hour": col("context", "categorical"),
        },
        positive_label="click",
        items={"item_id": col("item_id"), "category": col("categorical")},
    )
    return Dataset(schema, inter, items=items)


SPLIT = SplitConfig(windows={"train": 0.5, "test": 0.5}, cutoffs=(100,))
GAINS = {"click": 1.0, "like": 1.0}


def toy_data(**eval_kw) -> EvalData:
    ds = toy_dataset()
    split = split_dataset(ds, SPLIT)
    catalog = Catalog.from_dataset(ds, train=split.before("test"))
    cfg = EvalConfig(gains=GAINS, **eval_kw)
    return EvalData.from_split(split, cfg, catalog)


def qrels_dict(data: EvalData) -> dict:
    """{user ext id: {item ext id: gain}} of an EvalData (slow reference view)."""
    out = {}
    items = data.catalog.items.ids
    for b, u in enumerate(data.user_ids):
        row = data.qrels.getrow(b)
        out[u] = {items[i]: g for i, g in zip(row.indices, row.data)}
    return out


def test_relevance_known_answer_excludes_seen_items_and_drops_users():
    data = toy_data()
    assert list(data.user_ids) == ["u3", "u1", "u5"]  # order of the first test event
    assert qrels_dict(data) == {"u1": {"i5": 2.0}, "u3": {"i6": 1.0}, "u5": {"i7": 1.0, "i8": 1.0}}
    assert data.stats["window_users"] == 5
    assert data.stats["users_without_engagement"] == 1  # u4
    assert data.stats["users_with_only_seen_items"] == 1  # u2: its only test item i2 was seen in train
    assert data.stats["removed_seen_pairs"] == 2  # (u1, i0), (u2, i2)
    assert list(data.warm) == [True, True, False]
    # request time and context = the user's first event in the window (u3: the impression at t=105)
    assert list(data.requests.timestamps) == [105, 110, 140]
    assert list(data.requests.context["hour"]) == [11, 12, 15]
    # histories and exclusions = engagements before the window
    items = data.catalog.items
    assert [list(items.decode(data.requests.history.row(b))) for b in range(3)] == [["i0"], ["i0", "i1"], []]
    assert data.requests.exclude is not None
    # head items: counts before test i0:2 i1:1 i2:1; head_fraction 0.2 -> just i0
    assert list(items.decode(np.flatnonzero(data.head_items))) == ["i0"]
    assert data.item_counts[items.encode(["i0", "i1", "i2", "i3"])].tolist() == [2, 1, 1, 0]
    assert data.item_categories is not None and data.item_categories[items.encode(["i0", "i2"])].tolist() == [0, 1]


def test_relevance_without_exclude_seen_keeps_seen_items():
    data = toy_data(exclude_seen=False)
    assert qrels_dict(data) == {
        "u3": {"i6": 1.0}, "u1": {"i0": 1.0, "i5": 2.0}, "u2": {"i2": 1.0}, "u5": {"i7": 1.0, "i8": 1.0},
    }
    assert data.requests.exclude is None


def test_bad_eval_config_names_the_key():
    with pytest.raises(ValueError, match="positive_label.*'nope'"):
        toy_data(positive_label="nope")
    ds = toy_dataset()
    split = split_dataset(ds, SPLIT)
    catalog = Catalog.from_dataset(ds, train=split.before("test"))
    with pytest.raises(ValueError, match="eval.gains.*'rating'"):
        EvalData.from_split(split, EvalConfig(gains={"rating": 1.0}), catalog)


# ----------------------------------------------------------------------------------------------------------
# systems with known metric values


class PerfectSystem:
    """Returns exactly the relevant items, best gain first (reads the answers: a test double)."""

    name = "perfect"

    def __init__(self, data: EvalData) -> None:
        self.answers = {}
        for b, u in enumerate(data.user_ids):
            row = data.qrels.getrow(b)
            order = np.lexsort((row.indices, -row.data))
            self.answers[u] = row.indices[order]

    def rank(self, requests: Requests, k: int) -> Results:
        items = np.full((len(requests), k), -1, dtype=np.int64)
        for b, u in enumerate(requests.user_ids):
            a = self.answers.get(u, np.zeros(0, np.int64))[:k]
            items[b, : len(a)] = a
        scores = np.where(items >= 0, -np.arange(k, dtype=np.float64), np.nan)
        return Results(items=items, scores=scores)


class StageSystem:
    """A two-stage funnel over a fixed score vector: 'retrieve' keeps the top C1 items, the final list the top k
    of those by a second score. Deterministic and picklable (for the Ray test)."""

    name = "staged"

    def __init__(self, n_items: int, c1: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.s1 = rng.random(n_items)
        self.s2 = rng.random(n_items)
        self.c1 = c1

    def rank(self, requests: Requests, k: int) -> Results:
        b = len(requests)
        s1 = np.tile(self.s1, (b, 1)) + 1e-3 * (requests.users % 7)[:, None]
        cand, _ = top_k(s1, self.c1, requests.exclude)
        s2 = np.full(s1.shape, -np.inf)
        rows = np.repeat(np.arange(b), self.c1)
        ok = cand.ravel() >= 0
        s2[rows[ok], cand.ravel()[ok]] = self.s2[cand.ravel()[ok]]
        items, scores = top_k(s2, k)
        return Results(items=items, scores=scores, stages={"retrieve": cand}, degraded=[["x"]] * b)


def test_perfect_system_gets_ndcg_and_recall_one():
    data = toy_data()
    cfg = EvalConfig(gains=GAINS, ks=(1, 2, 5), metrics=("ndcg", "recall", "mrr", "map", "precision"), shards=2)
    ev = evaluate(PerfectSystem(data), data, cfg)
    for name in ("ndcg@5", "ndcg@10", "recall@5", "recall@10", "mrr@10", "map@10", "ndcg@1", "mrr@1"):
        np.testing.assert_allclose(ev.per_user[name], 1.0, err_msg=name)
    # u5 has 2 relevant items: recall@1 = 1/2, P@5 = 2/5
    np.testing.assert_allclose(ev.per_user["recall@1"], [1.0, 1.0, 0.5])
    np.testing.assert_allclose(ev.per_user["precision@5"], [0.2, 0.2, 0.4])
    assert ev.ranked.shape == (3, 100)  # at least the largest headline cut-off (recall@100)
    assert set(metric_names(cfg)) >= {"ndcg@10", "mrr@10", "map@10", "recall@10", "recall@100"}
    # segments: warm users u3, u1; cold user u5
    assert ev.segments["warm_users"]["n_users"] == 2 and ev.segments["cold_users"]["n_users"] == 1
    assert ev.segments["cold_users"]["recall@1"] == pytest.approx(0.5)
    # head item is only i0, which is nobody's relevant item now; all relevant items are tail
    assert ev.segments["head_items"]["n_users"] == 0 and ev.segments["head_items"]["recall@1"] is None
    assert ev.segments["tail_items"]["recall@1"] == pytest.approx(2.5 / 3)
    assert ev.funnel == {}  # no stages reported
    assert ev.beyond["coverage@5"] == pytest.approx(4 / 10)


def test_system_returning_nothing_gets_zero():
    data = toy_data()
    cfg = EvalConfig(gains=GAINS, ks=(10,), metrics=("ndcg", "recall"))
    nothing = PerfectSystem(data)
    nothing.answers = {u: np.zeros(0, np.int64) for u in nothing.answers}
    ev = evaluate(nothing, data, cfg)
    assert all(np.all(v == 0) for v in ev.per_user.values())


def test_head_items_known_answer():
    counts = np.array([10, 5, 3, 1, 1, 0])
    assert np.flatnonzero(head_items(counts, 0.5)).tolist() == [0]
    assert np.flatnonzero(head_items(counts, 0.6)).tolist() == [0, 1]
    assert np.flatnonzero(head_items(counts, 1.0)).tolist() == [0, 1, 2, 3, 4]  # never the unengaged item 5
    assert not head_items(np.zeros(3), 0.5).any()


def _slow_set_recall(cand: np.ndarray, q: sp.csr_matrix) -> np.ndarray:
    out = []
    for b in range(q.shape[0]):
        rel = set(q.getrow(b).indices.tolist())
        got = set(int(x) for x in cand[b] if x >= 0)
        out.append(len(rel & got) / len(rel) if rel else 0.0)
    return np.array(out)


def test_set_recall_and_restrict_columns_match_slow_reference():
    rng = np.random.default_rng(0)
    b, n, c = 40, 30, 12
    dense = (rng.random((b, n)) < 0.1) * rng.integers(1, 4, (b, n))
    q = sp.csr_matrix(dense.astype(np.float64))
    cand = rng.integers(-1, n, (b, c))  # with padding and duplicates
    np.testing.assert_allclose(set_recall(cand, q), _slow_set_recall(cand, q), atol=1e-15)
    keep = rng.random(n) < 0.4
    r = restrict_columns(q, keep)
    np.testing.assert_array_equal(r.toarray(), dense * keep[None, :])
    assert r.has_sorted_indices


def test_funnel_recall_on_hand_built_stages():
    data = toy_data()
    n = data.n_items
    idx = data.catalog.items.encode
    # rows in data order: u3 (rel i6), u1 (rel i5), u5 (rel i7, i8)
    stages = {
        "retrieve": np.array([idx(["i6", "i1", "i2"]), idx(["i0", "i1", "i2"]), [idx(["i7"])[0], -1, -1]]),
        "prerank": np.array([idx(["i6", "i1"]), idx(["i0", "i1"]), [-1, -1]]),
    }
    final = np.array([idx(["i6"]), idx(["i0"]), [-1]])

    class Fixed:
        name = "fixed"

        def rank(self, requests, k):
            rows = np.searchsorted(np.asarray(data.requests.timestamps), requests.timestamps)
            return Results(items=final[rows], scores=np.where(final[rows] >= 0, 1.0, np.nan),
                           stages={s: v[rows] for s, v in stages.items()})

    ev = evaluate(Fixed(), data, EvalConfig(gains=GAINS, ks=(1,), metrics=("recall",), shards=3))
    assert ev.funnel["retrieve"]["C"] == 3
    assert ev.funnel["retrieve"]["recall@3"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert ev.funnel["prerank"]["recall@2"] == pytest.approx(1 / 3)
    assert ev.funnel["retrieve"]["mean_candidates"] == pytest.approx(7 / 3)
    assert ev.funnel["final"]["recall"] == pytest.approx(1 / 3)
    assert n == 10


# ----------------------------------------------------------------------------------------------------------
# the synthetic world: no leakage, oracle beats random


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    synthetic = pytest.importorskip("recsys.data.synthetic")
    return synthetic.synthesize("tiny", 0, tmp_path_factory.mktemp("tiny") / "data")


def _tiny_data(ds, **kw):
    split = split_dataset(ds, SplitConfig())
    catalog = Catalog.from_dataset(ds, train=split.before("test"))
    return split, catalog, EvalData.from_split(split, EvalConfig(gains=GAINS, **kw), catalog)


def test_no_training_item_leaks_into_test_relevance(tiny_world):
    split, catalog, data = _tiny_data(tiny_world)
    past = split.before("test")
    past = past[past["click"] > 0]
    seen = set(zip(past["user_id"], past["item_id"]))
    items = catalog.items.ids
    pairs = [(u, items[i]) for b, u in enumerate(data.user_ids) for i in data.qrels.getrow(b).indices]
    assert pairs and not (set(pairs) & seen)
    assert (np.diff(data.qrels.indptr) > 0).all()  # every kept user has a relevant item
    # ... and every test engagement with an unseen item is there (nothing else dropped)
    test = split["test"]
    test = test[test["click"] > 0]
    expected = {(u, i) for u, i in zip(test["user_id"], test["item_id"]) if (u, i) not in seen}
    assert set(pairs) == expected


def test_max_users_samples_deterministically(tiny_world):
    _, _, full = _tiny_data(tiny_world)
    _, _, a = _tiny_data(tiny_world, max_users=10, seed=3)
    _, _, b = _tiny_data(tiny_world, max_users=10, seed=3)
    assert a.n_users == 10 and list(a.user_ids) == list(b.user_ids)
    assert set(a.user_ids) <= set(full.user_ids)
    assert a.stats["sampled_out"] == full.n_users - 10


class UniformRandom:
    name = "random"

    def __init__(self, n_items: int, seed: int = 0) -> None:
        self.n_items, self.seed = n_items, seed

    def rank(self, requests, k):
        rng = np.random.default_rng(self.seed)
        items, scores = top_k(rng.random((len(requests), self.n_items)), k, requests.exclude)
        return Results(items=items, scores=scores)


def test_oracle_beats_random_on_the_synthetic_world(tiny_world):
    from recsys.data.synthetic import Oracle

    _, catalog, data = _tiny_data(tiny_world)
    cfg = EvalConfig(gains=GAINS, ks=(10, 100), metrics=("ndcg", "recall"))
    oracle = evaluate(OracleSystem(Oracle.load(tiny_world.truth_dir), catalog), data, cfg)
    rand = evaluate(UniformRandom(data.n_items), data, cfg)
    assert oracle.means["ndcg@10"] > rand.means["ndcg@10"] + 0.1
    assert oracle.means["recall@100"] > rand.means["recall@100"]
    # the oracle respects exclusions like every system
    ex = data.requests.exclude
    for b in range(data.n_users):
        assert not set(oracle.ranked[b].tolist()) & set(ex.row(b).tolist())


def test_oracle_system_maps_oracle_items_to_catalogue_indices():
    class FakeOracle:
        item_ids = np.array(["i3", "i1", "zz"])  # zz: not in the catalogue

        def scores(self, user_ids, timestamps):
            return np.tile([3.0, 2.0, 9.0], (len(user_ids), 1))

    data = toy_data(exclude_seen=False)
    res = OracleSystem(FakeOracle(), data.catalog).rank(data.requests, 3)
    assert [list(data.catalog.items.decode(r[r >= 0])) for r in res.items] == [["i3", "i1"]] * data.n_users
    assert np.isnan(res.scores[:, 2]).all()


# ----------------------------------------------------------------------------------------------------------
# Ray backend


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    from recsys.configlib import RayConfig
    from recsys.distributed import init_ray, shutdown

    # stand-ins defined in this test module are shipped to the workers by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started = init_ray(RayConfig(num_cpus=2))
    yield
    if started:
        shutdown()


def _affine(x, a, b):
    return a * x + b


def test_map_shards_local_keeps_order_and_passes_shared_args():
    from recsys.distributed import map_shards

    assert map_shards(_affine, [3, 1, 2], "local", shared=(10, 1)) == [31, 11, 21]
    assert map_shards(_affine, [], "local", shared=(1, 0)) == []


@pytest.mark.ray
def test_ray_backend_equals_local(tiny_world, ray_session):
    from recsys.distributed import map_shards

    assert map_shards(_affine, list(range(7)), "ray", shared=(np.float64(2.0), 1)) == [2 * x + 1 for x in range(7)]
    _, catalog, data = _tiny_data(tiny_world)
    cfg = EvalConfig(gains=GAINS, shards=3)
    system = StageSystem(data.n_items, c1=150, seed=1)
    local = evaluate(system, data, cfg, backend="local")
    remote = evaluate(system, data, cfg, backend="ray")
    assert local.timings["shards"] == remote.timings["shards"] == 3
    np.testing.assert_array_equal(local.ranked, remote.ranked)
    assert local.per_user.keys() == remote.per_user.keys()
    for name in local.per_user:
        np.testing.assert_allclose(remote.per_user[name], local.per_user[name], rtol=0, atol=1e-12, err_msg=name)
    assert remote.funnel == local.funnel
    assert remote.segments == local.segments
    assert remote.beyond == pytest.approx(local.beyond, abs=1e-12)
    assert remote.degraded == local.degraded == {"x": data.n_users}
    assert local.funnel["retrieve"]["C"] == 150 and local.funnel["final"]["C"] == 100
    assert 0 < local.funnel["final"]["recall"] < local.funnel["retrieve"]["recall"] <= 1


def test_true_value_ndcg_is_one_for_the_value_order_and_respects_exclusions():
    from offline_eval.evaluator import true_value_ndcg
    from recsys.types import Ragged

    rng = np.random.default_rng(3)
    value = rng.random((6, 30))
    excl = Ragged.from_lists([[0, 1], [], [5], [], [29], [3, 4, 7]])
    masked = value.copy()
    for b in range(6):
        masked[b, excl.row(b)] = -np.inf
    best = np.argsort(-masked, axis=1)[:, :10]
    np.testing.assert_allclose(true_value_ndcg(best, value, excl), 1.0)
    worst = np.argsort(masked, axis=1)[:, :10]
    assert (true_value_ndcg(worst, value, excl) < 0.5).all()
    # hand-computed: values [3, 2, 1] ranked [1, 0] with k=2 -> (2 + 3/log2(3)) / (3 + 2/log2(3))
    got = true_value_ndcg(np.array([[1, 0]]), np.array([[3.0, 2.0, 1.0]]), None, k=2)
    np.testing.assert_allclose(got, (2 + 3 / np.log2(3)) / (3 + 2 / np.log2(3)))
