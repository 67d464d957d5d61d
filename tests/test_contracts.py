"""The stage contract, checked once for every stage (the way implicit's RecommenderBaseMixin checks every model):
constructors only store their config; padding is never scored or returned; a cut-off above the candidate
count pads; a cold user is served; scores do not depend on the batch; save/load round-trips; training is
deterministic, also beside a CPU-burning process.

The funnel here has a fourth, toy scoring stage (tests/toy_stage.py) added the way a user would add one: its
module, one registry line, the config. It goes through training, the bundle, loading, evaluation and serving.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import toy_stage

from recsys.config import load_config
from recsys.data.catalog import Catalog, positives
from recsys.data.schema import read_dataset
from recsys.data.split import split_dataset
from recsys.data.synthetic import synthesize
from recsys.stages.base import STAGES
from recsys.training import load_systems, train_engine

toy_stage.register()

FUNNEL = "[{stage: retrieval, k: 60}, {stage: prerank, k: 30}, {stage: toy, k: 20}, {stage: rank, k: 10}]"
OVERRIDES = [
    "retrieval.two_tower.max_epochs=2", "retrieval.two_tower.threads=1", "retrieval.index_factory=Flat",
    "prerank.n_estimators=40", "rank.train.max_epochs=3", "rank.exposure=true",
    "split.windows={train: 0.6, prerank: 0.1, toy: 0.1, rank: 0.1, test: 0.1}",
    f"engine.funnel={FUNNEL}",
    "stage_params={toy: {grid: [0.0, 0.5, 2.0]}}",
    "systems=[engine, prerank_only]",
    "eval.bootstrap_samples=20", "eval.baselines=[popularity]",
]


def _train_and_evaluate(tmp, name: str):
    from offline_eval.evaluator import run_evaluation

    ds = read_dataset(tmp / "data")
    cfg = load_config(None, OVERRIDES)
    bundle = train_engine(ds, cfg, tmp / name)
    systems = load_systems(bundle.path)
    metrics = run_evaluation(ds, cfg, tmp / f"{name}-report", systems=systems)
    return ds, cfg, bundle, systems, metrics


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("contracts")
    synthesize("tiny", 0, tmp / "data")
    ds, cfg, bundle, systems, metrics = _train_and_evaluate(tmp, "a")
    split = split_dataset(ds, cfg.split)
    last = split.names[-1]
    catalog = Catalog.from_dataset(ds, train=split.before(last))
    test = split[last].drop_duplicates("user_id").iloc[:24]
    req = catalog.requests(test["user_id"].to_numpy(), test["timestamp"].to_numpy(),
                           positives(split.before(last), "click"),
                           context={c: test[c].to_numpy() for c in ds.schema.context_columns})
    return tmp, ds, cfg, bundle, systems, metrics, req


def engine_of(world):
    return world[4]["engine"]


def stage_inputs(world, index: int):
    """(stage, requests, the candidates its upstream hands it) for scoring stage ``index`` of the engine."""
    engine, req = engine_of(world), world[6]
    stage = engine.stages[index][0]
    return stage, engine.encode(req), engine.upstream_of(index).candidates(req)


SCORING = [0, 1, 2]  # prerank, toy, rank


def test_the_toy_stage_is_in_the_funnel_and_the_manifest(world):
    tmp, ds, cfg, bundle, systems, metrics, req = world
    engine = engine_of(world)
    assert engine.stage_names == ["prerank", "toy", "rank"] and engine.retrieve_k == 60
    assert [(e["name"], e["type"], e["k"]) for e in bundle.manifest["funnel"]] == [
        ("retrieval", "retrieval", 60), ("prerank", "prerank", 30), ("toy", "toy", 20), ("rank", "rank", 10)]
    toy = engine.stages[1][0]
    assert type(toy).__name__ == "ToyStage" and toy.w in (0.0, 0.5, 2.0)
    # prerank_only drops the heavy ranker: its cut-off passes to the stage before it (toy, the same fitted one)
    only = systems["prerank_only"]
    assert only.stage_names == ["prerank", "toy"] and [k for _, k in only.stages] == [30, 10]
    assert only.stages[1][0] is toy
    # the heavy ranker learnt from the toy stage's 20 candidates per user (the pool it is served)
    m = bundle.manifest["metrics"]["rank"]
    assert 15 * m["users"] < m["funnel_rows"] <= 20 * m["users"]
    assert {"engine", "prerank_only", "popularity"} <= set(metrics["systems"])
    assert set(metrics["funnel"]["engine"]) >= {"retrieval", "prerank", "toy", "rank"}


def test_constructors_only_store_the_config():
    for name, st in STAGES.items():
        cls = st.load_class()
        stage = cls(cfg := object())
        assert stage.cfg is cfg, name
        for attr, v in vars(stage).items():
            if attr != "cfg":
                assert v is None or isinstance(v, (int, float, str)) or (
                    isinstance(v, (list, dict, tuple)) and not v), f"{name}.{attr} = {type(v).__name__} at init"


@pytest.mark.parametrize("index", SCORING)
def test_padding_is_never_scored_and_never_returned(world, index):
    stage, req, cands = stage_inputs(world, index)
    items = cands.items.copy()
    items[::3, -5:] = -1
    padded = dataclasses.replace(cands, items=items)
    s = np.asarray(stage.score(req, padded)["score"])
    assert s.shape == items.shape
    assert not np.isfinite(s[items < 0]).any() and np.isfinite(s[items >= 0]).all()


def test_retrieval_pads_beyond_the_catalogue_and_scoring_cutoffs_beyond_the_candidates(world):
    engine, req = engine_of(world), engine_of(world).encode(world[6])
    n = engine.catalog.n_items
    c = engine.retrieval.retrieve(req, n + 50)
    assert c.items.shape == (len(req), n + 50) and (c.items[:, -50:] == -1).all()
    big = dataclasses.replace(engine, stages=[(s, 500) for s, _ in engine.stages])
    res = big.rank(world[6], 10)  # every stage keeps more than it is handed: padding, never invented items
    for name in ("prerank", "toy", "rank"):
        kept = res.stages[name]
        assert kept.shape == (len(req), 500) and (kept[:, 60:] == -1).all() and (kept[:, :40] >= 0).all()
    assert res.items.shape == (len(req), 10) and (res.items >= 0).all()


@pytest.mark.parametrize("index", SCORING)
def test_cold_user_is_served(world, index):
    stage, req, _ = stage_inputs(world, index)
    engine = engine_of(world)
    cold = dataclasses.replace(req.take([0]), users=np.array([engine.catalog.users.oov]),
                               user_ids=np.array(["nobody"], dtype=object))
    cold = dataclasses.replace(cold, history=type(cold.history)(np.zeros(2, np.int64), np.zeros(0, np.int64)),
                               exclude=None)
    cands = engine.upstream_of(index).candidates(cold)
    s = np.asarray(stage.score(cold, cands)["score"])
    assert np.isfinite(s[cands.items >= 0]).all() and (cands.items >= 0).any()
    assert engine.rank(cold, 10).degraded[0] == ["cold_start"]


@pytest.mark.parametrize("index", SCORING)
def test_scores_do_not_depend_on_the_batch(world, index):
    stage, req, cands = stage_inputs(world, index)
    batch = np.asarray(stage.score(req, cands)["score"])
    for b in (0, 5, len(req) - 1):
        one = np.asarray(stage.score(req.take([b]), cands.take(np.array([b])))["score"])[0]
        np.testing.assert_allclose(one, batch[b], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("index", SCORING + [-1])
def test_save_load_round_trip(world, index, tmp_path):
    engine = engine_of(world)
    if index == -1:
        stage, req = engine.retrieval, engine.encode(world[6])
        again = type(stage).load(_saved(stage, tmp_path), engine.catalog)
        a, b = stage.retrieve(req, 40), again.retrieve(req, 40)
        np.testing.assert_array_equal(a.items, b.items)
        return
    stage, req, cands = stage_inputs(world, index)
    again = type(stage).load(_saved(stage, tmp_path), engine.catalog)
    np.testing.assert_array_equal(stage.score(req, cands)["score"], again.score(req, cands)["score"])


def _saved(stage, folder):
    folder.mkdir(parents=True, exist_ok=True)
    stage.save(folder)
    return folder


def test_the_toy_stage_is_served_over_http(world):
    from test_serving import LiveServer

    from serving.app import create_app
    from serving.config import ServingConfig
    from serving.state import ServiceState

    engine = engine_of(world)
    req = world[6]
    state = ServiceState(ServingConfig(budget_ms=5000))
    state.install(engine, "test", warmup=False)
    user = str(req.user_ids[0])
    hist = engine.catalog.items.ids[req.history.row(0)].tolist()
    with LiveServer(create_app(state)) as srv:
        r = srv.client.post("/v1/rank", json={"user_id": req.user_ids[0].item(), "k": 10, "history": hist,
                                              "timestamp": int(req.timestamps[0]), "debug": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["debug"]["candidates"]["toy"] == 20 and "toy" in body["timings_ms"]
    assert all("toy" in it["scores"] for it in body["items"]) and user


def test_training_is_deterministic_beside_a_cpu_burning_process(world):
    """Same data, config and seed: identical metrics, once on an idle and once on a busy machine."""
    tmp, *_ , metrics, _req = world
    burners = [subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 120: pass"])
               for _ in range(2)]
    try:
        *_, again = _train_and_evaluate(tmp, "b")
    finally:
        for p in burners:
            p.kill()
            p.wait()
    strip = lambda m: json.dumps({k: v for k, v in m.items() if k not in ("timings", "created_at", "report")},  # noqa: E731
                                 sort_keys=True, default=str)
    assert strip(again["systems"]) == strip(metrics["systems"])
    assert again["comparisons"] == metrics["comparisons"]
