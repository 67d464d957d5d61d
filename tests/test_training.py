"""Point-in-time feature contexts of the training pipeline (recsys.training): the heavy ranker's rows are built
with the features as of its own window, the way the serving snapshot computes them for the test window."""

from __future__ import annotations

import types

import numpy as np
import pytest

from recsys.configlib import SplitConfig
from recsys.data.catalog import Catalog
from recsys.data.split import split_dataset
from recsys.data.synthetic import synthesize
from recsys.prerank.stage import PrerankConfig
from recsys.training import ContextsAt, lookback_events, stage_windows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ds = synthesize("tiny", 0, tmp_path_factory.mktemp("w") / "tiny")
    split = split_dataset(ds, SplitConfig())
    return ds, split, stage_windows(split)


def test_lookback_events_end_where_the_window_starts(tiny):
    ds, split, windows = tiny
    t = "timestamp"
    train = split[windows["retrieval"]]
    lookback = int(train[t].max() - train[t].min()) + 1
    for at in ("prerank", "rank", "test"):
        start = int(split[windows[at]][t].min())
        ev = lookback_events(split, windows, at, t)
        before = split.before(windows[at])
        assert len(ev) > 0 and ev[t].max() < start and ev[t].min() >= start - lookback
        # exactly the events of the look-back: nothing inside it is dropped
        assert len(ev) == int((before[t].to_numpy() >= start - lookback).sum())


def test_contexts_at_share_one_context_per_config_and_copy_stages(tiny):
    ds, split, windows = tiny
    catalog = Catalog.from_dataset(ds, train=split[windows["retrieval"]])
    at = ContextsAt(ds, catalog, lookback_events(split, windows, "rank", "timestamp"))
    cfg = PrerankConfig()
    ctx = at.get(cfg)
    assert at.get(PrerankConfig()) is ctx  # equal graph / feature settings: one context
    other = at.get(PrerankConfig(feature_params=type(cfg.feature_params)(ppr_last_n=3)))
    assert other is not ctx
    stage = types.SimpleNamespace(cfg=cfg, ctx="trained-with", name="prerank")
    moved = at.stage(stage)
    assert moved.ctx is ctx and stage.ctx == "trained-with" and moved.name == "prerank"
    assert at.stage(None) is None
    # the rank-window context counts the engagements up to the rank window: more than the train window's
    train_ctx_events = lookback_events(split, windows, "prerank", "timestamp")
    assert not np.array_equal(np.sort(train_ctx_events.index), np.sort(at.events.index))


def test_refit_is_walk_forward_every_stage_learns_from_the_two_tower_that_serves_its_window(tmp_path, monkeypatch):
    """``retrieval.refit``: the pre-ranker's upstream is the first two-tower (only the train window precedes its
    window), the heavy ranker's a two-tower retrained on the train and pre-rank windows with their users, and the
    bundle serves one retrained on every window before the test window, never a model a stage did not see as
    of its own window."""
    import torch

    import recsys.training as tr
    from recsys.config import load_config
    from recsys.data.schema import read_dataset

    torch.set_num_threads(1)
    synthesize("tiny", 0, tmp_path / "data")
    ds = read_dataset(tmp_path / "data")
    cfg = load_config(None, ["retrieval.two_tower.max_epochs=2", "retrieval.two_tower.threads=1",
                             "retrieval.index_factory=Flat", "prerank.n_estimators=20", "rank.train.max_epochs=2",
                             "systems=[engine]", "retrieval.refit=true",
                             "engine.funnel=[{stage: retrieval, k: 60}, {stage: prerank, k: 30}, "
                             "{stage: rank, k: 10}]"])
    refits: dict[str, tuple] = {}
    real_refit, real_build = tr.refit_candidates, tr.build_stage

    def refit_spy(ds_, cfg_, split_, window, first):
        out = real_refit(ds_, cfg_, split_, window, first)
        refits[window] = (out, first, split_.before(window))
        return out

    contexts: dict[str, object] = {}

    def build_spy(name, type_name, stage_cfg):
        stage = real_build(name, type_name, stage_cfg)
        fit = stage.fit

        def fit_spy(ctx):
            contexts[name] = ctx
            return fit(ctx)

        stage.fit = fit_spy
        return stage

    monkeypatch.setattr(tr, "refit_candidates", refit_spy)
    monkeypatch.setattr(tr, "build_stage", build_spy)
    bundle = tr.train_engine(ds, cfg, tmp_path / "bundle")
    assert sorted(refits) == ["rank", "test"]
    (rank_catalog, rank_tt), first, before_rank = refits["rank"]
    assert contexts["prerank"].upstream.retrieval is first  # nothing but the train window precedes prerank
    assert contexts["rank"].upstream.retrieval is rank_tt and contexts["rank"].catalog is rank_catalog
    assert contexts["rank"].upstream.catalog is rank_catalog
    first_window = split_dataset(ds, cfg.split)["train"]
    assert rank_catalog.n_users == before_rank["user_id"].nunique() > first_window["user_id"].nunique()
    (test_catalog, test_tt), _, before_test = refits["test"]
    assert test_catalog.n_users == before_test["user_id"].nunique()
    served = tr.load_engine(bundle.path)
    assert served.catalog.n_users == test_catalog.n_users
    np.testing.assert_array_equal(served.retrieval.item_vectors, test_tt.item_vectors)
    assert not np.array_equal(rank_tt.item_vectors, test_tt.item_vectors)
    assert bundle.manifest["metrics"]["retrieval"]["refit"]["windows"] == ["train", "prerank", "rank"]

