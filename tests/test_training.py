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
        ev = lookback_events(split, windows[at], windows["retrieval"], t)
        before = split.before(windows[at])
        assert len(ev) > 0 and ev[t].max() < start and ev[t].min() >= start - lookback
        # exactly the events of the look-back: nothing inside it is dropped
        assert len(ev) == int((before[t].to_numpy() >= start - lookback).sum())


def test_contexts_at_share_one_context_per_config_and_copy_stages(tiny):
    ds, split, windows = tiny
    catalog = Catalog.from_dataset(ds, train=split[windows["retrieval"]])
    at = ContextsAt(ds, catalog, lookback_events(split, windows["rank"], windows["retrieval"], "timestamp"))
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
    train_ctx_events = lookback_events(split, windows["prerank"], windows["retrieval"], "timestamp")
    assert not np.array_equal(np.sort(train_ctx_events.index), np.sort(at.events.index))


def _spy_training(monkeypatch):
    """Record every walk-forward refit ``{window: ((catalogue, stage), first, history)}`` and every stage fit
    ``[(name, stage, FitContext)]`` of the next ``recsys.training.train_engine``."""
    import recsys.training as tr

    refits: dict[str, tuple] = {}
    fits: list[tuple] = []
    real_refit, real_build = tr.refit_candidates, tr.build_stage

    def refit_spy(ds_, cfg_, split_, window, first):
        out = real_refit(ds_, cfg_, split_, window, first)
        refits[window] = (out, first, split_.before(window))
        return out

    def build_spy(name, type_name, stage_cfg):
        stage = real_build(name, type_name, stage_cfg)
        fit = stage.fit

        def fit_spy(ctx):
            fits.append((name, stage, ctx))
            return fit(ctx)

        stage.fit = fit_spy
        return stage

    monkeypatch.setattr(tr, "refit_candidates", refit_spy)
    monkeypatch.setattr(tr, "build_stage", build_spy)
    return refits, fits


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
    refits, fits = _spy_training(monkeypatch)
    bundle = tr.train_engine(ds, cfg, tmp_path / "bundle")
    contexts = {name: ctx for name, _, ctx in fits}
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



def _windows_cfg(funnel: str, extra=()):
    from recsys.config import load_config

    return load_config(None, ["split.windows={train: 0.6, early: 0.1, prerank: 0.1, rank: 0.1, test: 0.1}",
                              f"engine.funnel={funnel}", *extra])


@pytest.mark.parametrize("funnel, message", [
    ("[{stage: retrieval, k: 60, windows: [early]}, {stage: prerank, k: 30}, {stage: rank, k: 10}]",
     "candidate stage trains on the split's first window"),
    ("[{stage: retrieval, k: 60}, {stage: prerank, k: 30, windows: [early, nope]}, {stage: rank, k: 10}]",
     "unknown window(s) ['nope']"),
    ("[{stage: retrieval, k: 60}, {stage: prerank, k: 30, windows: [prerank, early]}, {stage: rank, k: 10}]",
     "must be in time order"),
    ("[{stage: retrieval, k: 60}, {stage: prerank, k: 30, windows: [train, prerank]}, {stage: rank, k: 10}]",
     "after the candidate stage's 'train' and before the test window"),
    ("[{stage: retrieval, k: 60}, {stage: prerank, k: 30, windows: [early, test]}, {stage: rank, k: 10}]",
     "after the candidate stage's 'train' and before the test window"),
    # the heavy ranker's first cut point has no pre-ranker trained before it
    ("[{stage: retrieval, k: 60}, {stage: prerank, k: 30, windows: [early, prerank]}, "
     "{stage: rank, k: 10, windows: [early, rank]}]", "first and last windows must come after its upstream"),
    ("[{stage: retrieval, k: 60}, {stage: prerank, k: 30, windows: [early, rank]}, "
     "{stage: rank, k: 10, windows: [prerank, rank]}]", "first and last windows must come after its upstream"),
    ("[{stage: retrieval, k: 60}, {stage: prerank, k: 30, windows: [early, early]}, {stage: rank, k: 10}]",
     "duplicate window names"),
])
def test_stage_windows_are_checked_with_a_one_line_error(tiny, funnel, message):
    from recsys.config import ConfigError
    from recsys.training import train_windows

    ds = tiny[0]
    with pytest.raises(ConfigError) as e:
        cfg = _windows_cfg(funnel)
        train_windows(split_dataset(ds, cfg.split), cfg.engine)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_train_windows_default_to_the_window_of_each_stage(tiny):
    from recsys.training import train_windows

    ds = tiny[0]
    cfg = _windows_cfg("[{stage: retrieval, k: 60}, {stage: prerank, k: 30, windows: [early, prerank]}, "
                       "{stage: rank, k: 10}]")
    split = split_dataset(ds, cfg.split)
    assert train_windows(split, cfg.engine) == {"prerank": ["early", "prerank"], "rank": ["rank"]}
    assert stage_windows(split, cfg.engine)["prerank"] == "prerank"


def test_several_cut_points_each_served_by_an_upstream_trained_before_it(tmp_path, monkeypatch):
    """``engine.funnel[i].windows``: a stage's rows come from every listed window, each built at the window's
    start with the point-in-time features, the history and the upstream *as of that window*: the two-tower that
    serves it (walk-forward refit) and every upstream scoring stage trained on its own windows before it, never
    a model that saw the row's label. The shipped upstream serves the stage's last cut point, as in the bundle."""
    import torch

    import recsys.training as tr
    from recsys.data.schema import read_dataset

    torch.set_num_threads(1)
    synthesize("tiny", 0, tmp_path / "data")
    ds = read_dataset(tmp_path / "data")
    cfg = _windows_cfg("[{stage: retrieval, k: 60}, {stage: prerank, k: 30, windows: [early, prerank]}, "
                       "{stage: rank, k: 10, windows: [prerank, rank]}]",
                       ["retrieval.two_tower.max_epochs=2", "retrieval.two_tower.threads=1",
                        "retrieval.index_factory=Flat", "prerank.n_estimators=20", "rank.train.max_epochs=2",
                        "systems=[engine]", "retrieval.refit=true"])
    refits, fits = _spy_training(monkeypatch)
    bundle = tr.train_engine(ds, cfg, tmp_path / "bundle")
    split = split_dataset(ds, cfg.split)
    windows = {(name, tuple(c.window for c in ctx.cuts)): (stage, ctx.cuts) for name, stage, ctx in fits
               if name != "retrieval"}
    assert sorted(windows) == [("prerank", ("early",)), ("prerank", ("early", "prerank")),
                               ("rank", ("prerank", "rank"))]
    assert sorted(refits) == ["prerank", "rank", "test"]  # "early" is served by the first two-tower
    as_of, _ = windows[("prerank", ("early",))]
    shipped, _ = windows[("prerank", ("early", "prerank"))]
    _, rank_cuts = windows[("rank", ("prerank", "rank"))]
    for c in rank_cuts:  # each cut: its own window, the history before it, the two-tower that serves it
        assert c.window_df.equals(split[c.window]) and c.history.equals(split.before(c.window))
        cat_w, tt_w = refits[c.window][0]
        assert c.upstream.retrieval is tt_w and c.catalog is cat_w and c.upstream.catalog is cat_w
    # the pre-ranker over the heavy ranker's "prerank" rows never saw them; the shipped one serves "rank"
    assert rank_cuts[0].upstream.stages[0][0].booster is as_of.booster
    assert rank_cuts[1].upstream.stages[0][0].booster is shipped.booster
    # the upstream pre-ranker computes its features with the cut point's own (point-in-time) context
    up_ctx = [c.upstream.stages[0][0].ctx for c in rank_cuts]
    assert all(u is c.feature_context(shipped.cfg) for u, c in zip(up_ctx, rank_cuts)) and up_ctx[0] is not up_ctx[1]
    m = bundle.manifest["metrics"]
    assert m["prerank"]["cut_points"] == 2 and m["rank"]["cut_points"] == 2
    assert m["rank"]["requests"] > m["rank"]["users"]  # users active in both windows give a request at each
    served = tr.load_engine(bundle.path)
    assert served.stages[0][0].booster.model_to_string() == shipped.booster.model_to_string()


def test_every_training_window_of_a_stage_needs_an_engagement(tiny):
    """A cut point whose window has rows but no engagement is refused before training, naming the window and
    the stage (it used to check only the windows at fixed positions)."""
    import dataclasses

    from recsys.data.schema import DatasetError
    from recsys.validate import check_config

    ds = tiny[0]
    from recsys.config import load_config

    cfg = load_config(None, ["split.windows={train: 0.5, w0: 0.1, early: 0.1, prerank: 0.1, rank: 0.1, test: 0.1}",
                             "engine.funnel=[{stage: retrieval, k: 60}, {stage: prerank, k: 30, windows: "
                             "[early, prerank]}, {stage: rank, k: 10}]"])
    check_config(cfg, ds)  # the world as it is: fine
    early = split_dataset(ds, cfg.split)["early"]
    inter = ds.interactions.copy()
    t = inter["timestamp"].to_numpy()
    inside = (t >= early["timestamp"].min()) & (t <= early["timestamp"].max())
    for label in ds.schema.labels:
        inter.loc[inside, label] = 0
    with pytest.raises(DatasetError, match=r"split window 'early' \(prerank\) has 0 engagement\(s\)"):
        check_config(cfg, dataclasses.replace(ds, interactions=inter))
