"""The Engine end to end on the tiny synthetic world: a bundle with all three stages round-trips, the
retrieval-only engine equals the stage's own ranking, batched and single-user results are identical, the
funnel narrows as configured, deadlines degrade instead of hanging, and a tampered bundle is refused."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from offline_eval.evaluator import EvalData
from recsys.bundle import BundleError
from recsys.config import load_config
from recsys.data.catalog import Catalog
from recsys.data.schema import read_dataset
from recsys.data.split import split_dataset
from recsys.data.synthetic import synthesize
from recsys.engine import Deadline, DeadlineExceeded
from recsys.training import load_engine, load_systems, train_engine

OVERRIDES = [
    "retrieval.two_tower.max_epochs=3",
    "retrieval.two_tower.threads=1",
    "rank.train.max_epochs=3",
    "rank.exposure=true",  # funnel candidates + impressions, as configs/default.yaml
    "systems=[engine, retrieval_only, no_prerank]",
    "engine.funnel=[{stage: retrieval, k: 60}, {stage: prerank, k: 30}, {stage: rank, k: 10}]",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("engine")
    synthesize("tiny", 0, tmp / "data")
    ds = read_dataset(tmp / "data")
    cfg = load_config(None, OVERRIDES)
    bundle = train_engine(ds, cfg, tmp / "art")
    split = split_dataset(ds, cfg.split)
    last = split.names[-1]
    data = EvalData.from_split(split, cfg.eval, Catalog.from_dataset(ds, train=split.before(last)), last)
    return tmp, ds, cfg, bundle, data


def test_bundle_has_all_stages_and_round_trips(world):
    tmp, ds, cfg, bundle, data = world
    assert {"retrieval", "prerank", "rank"} <= set(bundle.stages)
    a = load_engine(tmp / "art")  # parent folder -> latest
    b = load_engine(bundle.path)
    assert [s.name for s, _ in a.stages] == ["prerank", "rank"]
    assert a.version == bundle.version
    ra, rb = a.rank(data.requests, 10), b.rank(data.requests, 10)
    np.testing.assert_array_equal(ra.items, rb.items)
    np.testing.assert_array_equal(ra.scores, rb.scores)


def test_funnel_narrows_as_configured(world):
    tmp, ds, cfg, bundle, data = world
    res = load_engine(bundle.path).rank(data.requests, 10)
    assert res.stages["retrieval"].shape[1] == 60
    assert res.stages["prerank"].shape[1] == 30
    assert res.items.shape == (len(data.requests), 10)
    for b in range(len(data.requests)):  # every returned item survived every upstream stage
        got = res.items[b][res.items[b] >= 0]
        assert np.isin(got, res.stages["prerank"][b]).all()
        assert np.isin(got, res.stages["retrieval"][b]).all()
        assert not np.isin(got, data.requests.exclude.row(b)).any()
    assert {"p_click", "p_like", "prerank", "rank"} <= set(res.stage_scores)


def test_retrieval_only_engine_equals_the_stage_ranking(world):
    tmp, ds, cfg, bundle, data = world
    engine = load_engine(bundle.path)
    only = load_systems(bundle.path)["retrieval_only"]
    req = engine.encode(data.requests)
    a, b = only.rank(data.requests, 10), engine.retrieval.rank(req, 10)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_batched_and_single_user_results_are_identical(world):
    tmp, ds, cfg, bundle, data = world
    engine = load_engine(bundle.path)
    batch = engine.rank(data.requests, 10)
    for b in range(min(len(data.requests), 12)):
        one = engine.rank(data.requests.take([b]), 10)
        np.testing.assert_array_equal(one.items[0], batch.items[b])
        # the same items in the same order; scores agree to float32 precision (BLAS may sum a batch of one
        # in another order than a batch of many, which can flip the last bit of a float32 probability)
        np.testing.assert_allclose(one.scores[0], batch.scores[b], rtol=1e-6, atol=0)
        assert one.degraded[0] == batch.degraded[b]


class _Slow:
    def __init__(self, stage, seconds):
        self.stage, self.seconds, self.name = stage, seconds, stage.name

    def score(self, requests, cands):
        time.sleep(self.seconds)
        return self.stage.score(requests, cands)

    def retrieve(self, requests, k):
        time.sleep(self.seconds)
        return self.stage.retrieve(requests, k)

    def __getattr__(self, item):
        return getattr(self.stage, item)


def test_slow_heavy_ranker_degrades_to_the_prerank_order_within_budget(world):
    tmp, ds, cfg, bundle, data = world
    engine = load_engine(bundle.path)
    req = data.requests.take([0])
    ref = dataclasses.replace(engine, stages=engine.stages[:1]).rank(req, 10)  # pre-rank order
    slow = dataclasses.replace(engine, stages=[engine.stages[0], (_Slow(engine.stages[1][0], 2.0), 10)])
    t0 = time.perf_counter()
    res = slow.rank(req, 10, deadline=Deadline(0.5, {"rank": 0.3}))
    assert time.perf_counter() - t0 < 1.0
    assert "rank:timeout" in res.degraded[0]
    np.testing.assert_array_equal(res.items, ref.items)


class _Seen:
    """A scoring stage that records the candidates it is handed."""

    def __init__(self, stage) -> None:
        self.stage, self.seen = stage, []

    def score(self, requests, cands):
        self.seen.append(cands.items.copy())
        return self.stage.score(requests, cands)

    def __getattr__(self, item):
        return getattr(self.stage, item)


def test_a_dropped_prerank_hands_the_heavy_ranker_its_trained_cut_off(world):
    """The pre-ranker times out: the heavy ranker gets the retrieval order's top prerank_k (the size it was
    trained on), not every retrieved candidate."""
    tmp, ds, cfg, bundle, data = world
    engine = load_engine(bundle.path)
    (pre, pre_k), (rank, rank_k) = engine.stages
    assert engine.retrieve_k > pre_k
    req = data.requests.take([0, 1])
    seen = _Seen(rank)
    slow = dataclasses.replace(engine, stages=[(_Slow(pre, 2.0), pre_k), (seen, rank_k)])
    res = slow.rank(req, 10, deadline=Deadline(1.0, {"prerank": 0.2, "rank": 0.7}))
    assert all("prerank:timeout" in d for d in res.degraded)
    retrieved = engine.retrieval.retrieve(engine.encode(req), engine.retrieve_k).items
    assert len(seen.seen) == 1 and seen.seen[0].shape == (2, pre_k)
    np.testing.assert_array_equal(seen.seen[0], retrieved[:, :pre_k])


def test_slow_retrieval_raises_deadline_exceeded(world):
    tmp, ds, cfg, bundle, data = world
    engine = load_engine(bundle.path)
    slow = dataclasses.replace(engine, retrieval=_Slow(engine.retrieval, 2.0))
    t0 = time.perf_counter()
    with pytest.raises(DeadlineExceeded):
        slow.rank(data.requests.take([0]), 10, deadline=Deadline(0.3))
    assert time.perf_counter() - t0 < 1.0


def test_tampered_bundle_is_refused_by_name(world, tmp_path):
    import shutil

    tmp, ds, cfg, bundle, data = world
    copy = tmp_path / "copy"
    shutil.copytree(bundle.path, copy)
    target = copy / "rank" / "model.safetensors"
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"model.safetensors: sha256 does not match"):
        load_engine(copy)


def test_manifest_records_the_funnel_and_each_system_loads_as_a_loop(world):
    tmp, ds, cfg, bundle, data = world
    m = bundle.manifest
    assert [(e["name"], e["type"], e["k"]) for e in m["funnel"]] == [
        ("retrieval", "retrieval", 60), ("prerank", "prerank", 30), ("rank", "rank", 10)]
    assert set(m["systems"]) == {"engine", "retrieval_only", "no_prerank"}
    systems = load_systems(bundle.path)
    # no_prerank: the pre-ranker's cut-off passes to retrieval, and its heavy ranker was trained that way
    nop = systems["no_prerank"]
    assert nop.retrieve_k == 30 and nop.stage_names == ["rank"]
    assert [e["folder"] for e in m["systems"]["no_prerank"]["stages"]] == ["retrieval", "rank@no_prerank"]
    assert nop.retrieval is systems["engine"].retrieval  # shared stages are loaded once
    assert "prerank_score" not in nop.stages[0][0].feature_names
    assert systems["retrieval_only"].stages == []


def test_each_scoring_stage_trained_on_the_pool_it_is_served(world):
    """Cascade consistency: the heavy ranker's funnel rows are the served pool of its upstream (retrieval@60
    -> pre-ranker@30), not a hand-sized one; the no_prerank heavy ranker's are retrieval@30."""
    tmp, ds, cfg, bundle, data = world
    m = bundle.manifest["metrics"]
    split = split_dataset(ds, cfg.split)
    rank_users = m["rank"]["users"]
    assert m["rank"]["funnel_rows"] <= 30 * rank_users and m["rank"]["funnel_rows"] > 25 * rank_users
    assert m["rank@no_prerank"]["funnel_rows"] <= 30 * rank_users
    # the pre-ranker's groups hold at most the 60 served candidates plus as many impression negatives
    assert m["prerank"]["train_rows"] <= 2 * 60 * m["prerank"]["train_users"]
    assert m["prerank"]["train_rows"] > 50 * m["prerank"]["train_users"]
    assert len(split["rank"]) > 0


def test_removed_size_keys_are_config_errors_naming_the_funnel():
    from recsys.config import ConfigError

    for key in ("prerank.candidates_k=200", "rank.candidates_k=50", "rank.retrieve_k=200", "engine.retrieve_k=60"):
        with pytest.raises(ConfigError, match=r"removed; .*engine\.funnel"):
            load_config(None, [key])
    with pytest.raises(ConfigError, match=r"cut-offs must be >= 1 and non-increasing"):
        load_config(None, ["engine.funnel=[{stage: retrieval, k: 10}, {stage: prerank, k: 30}, {stage: rank, k: 5}]"])
    with pytest.raises(ConfigError, match=r"first stage must be a candidate stage"):
        load_config(None, ["engine.funnel=[{stage: prerank, k: 30}, {stage: rank, k: 5}]"])


def test_candidates_memo_returns_exactly_what_the_engine_computes(world):
    """Training shares one upstream's candidates between the stages that learn from it (Engine.memo)."""
    tmp, ds, cfg, bundle, data = world
    engine = load_engine(bundle.path)
    memo = dataclasses.replace(engine.upstream_of(1), memo={})
    req = data.requests.take(np.arange(20))
    a, plain = memo.candidates(req), engine.upstream_of(1).candidates(req)
    assert memo.candidates(req) is a and len(memo.memo) == 1
    np.testing.assert_array_equal(a.items, plain.items)
    np.testing.assert_array_equal(a.scores["prerank"], plain.scores["prerank"])
    other = memo.candidates(data.requests.take(np.arange(1, 21)))  # another batch: another entry
    assert len(memo.memo) == 2 and not np.array_equal(other.items, a.items)
