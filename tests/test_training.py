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
