"""The LightGBM pre-ranker: planted-signal improvement over the retrieval order, save/load, refusal of a
model with mismatched feature names, determinism, and the stage in the engine on the synthetic world."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from fitting import fit_context, upstream

from recsys.data.catalog import Catalog, positives
from recsys.data.schema import Dataset, col, make_schema, validate
from recsys.features import CANDIDATE_SOURCE_FEATURES, FeatureContext
from recsys.prerank.stage import PrerankConfig, PrerankStage, build_ranking_data, group_ndcg
from recsys.retrieval.sources import Candidates

START = 1_700_000_000
DAY = 86_400
N_ITEMS, N_CAT = 60, 4
CUT = START + 10 * DAY


def planted_world(seed: int = 0, n_users: int = 240) -> Dataset:
    """Items in 4 categories (item i: category i % 4); user u prefers category u % 4. Before CUT each user clicks
    3 items of their category; after CUT 2 more (new) ones. Each user is also shown 6 random items they do not
    click, before and after CUT. The retrieval stand-in below ignores categories."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        fav = np.arange(u % N_CAT, N_ITEMS, N_CAT)
        clicked = rng.choice(fav, 5, replace=False)
        others = rng.choice(np.setdiff1d(np.arange(N_ITEMS), clicked), 12, replace=False)
        for k, i in enumerate(clicked):
            t = START + (rng.integers(0, 9 * DAY) if k < 3 else CUT + rng.integers(0, 2 * DAY))
            rows.append((u, 1000 + i, t, 1))
        for k, i in enumerate(others):
            t = START + rng.integers(0, 9 * DAY) if k < 6 else CUT + rng.integers(0, 2 * DAY)
            rows.append((u, 1000 + i, t, 0))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "click"])
    items = pd.DataFrame({"item_id": 1000 + np.arange(N_ITEMS),
                          "category": [f"c{i % N_CAT}" for i in range(N_ITEMS)],
                          "created_at": START - DAY * (1 + np.arange(N_ITEMS))})
    schema = make_schema(
        "planted", interactions={"user_id": col("user_id"), "item_id": col("item_id"),
                                 "timestamp": col("timestamp"), "click": col("label", "binary")},
        positive_label="click", items={"item_id": col("item_id"), "category": col("categorical"),
                                       "created_at": col("numeric")},
        has_impressions=True,
    )
    return validate(Dataset(schema, inter, items=items))


class ShuffleRetrieval:
    """Retrieval stand-in: a per-user random order of the catalogue (seen items excluded), with decreasing random
    'ann' scores; it knows nothing about categories. Row-wise, so batch-invariant."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def is_cold(self, requests):
        return np.zeros(len(requests), bool)

    def retrieve(self, requests, k: int) -> Candidates:
        b = len(requests)
        items = np.full((b, k), -1, dtype=np.int64)
        scores = np.full((b, k), np.nan, dtype=np.float32)
        for r in range(b):
            rng = np.random.default_rng(int(requests.users[r]))
            order = rng.permutation(self.n_items)
            order = order[~np.isin(order, requests.history.row(r))][:k]
            items[r, : len(order)] = order
            scores[r, : len(order)] = np.sort(rng.random(len(order)))[::-1]
        source = np.where(items >= 0, 0, -1).astype(np.int8)
        return Candidates(items, source, {"ann": scores, "popularity": np.full((b, k), np.nan, np.float32)},
                          ["ann", "popularity"])


CFG = PrerankConfig(num_threads=1, n_estimators=60, min_data_in_leaf=5, num_leaves=7, learning_rate=0.1,
                    early_stopping_rounds=15, valid_fraction=0.3, seed=0)
K = 20  # the candidates the upstream serves the stage


@pytest.fixture(scope="module")
def planted():
    ds = planted_world()
    inter = ds.interactions
    past, window = inter[inter["timestamp"] < CUT], inter[inter["timestamp"] >= CUT]
    catalog = Catalog.from_dataset(ds, train=past)
    ctx = FeatureContext.fit(ds, catalog, past)
    retrieval = upstream(ShuffleRetrieval(catalog.n_items), K)
    stage = PrerankStage(CFG).fit(fit_context(ds, catalog, window, past, retrieval, ctx))
    first = window.drop_duplicates("user_id")
    req = catalog.requests(first["user_id"].to_numpy()[:40], first["timestamp"].to_numpy()[:40],
                           positives(past, "click"))
    cands = retrieval.retrieval.retrieve(req, 25)
    cands.items[3, -5:] = -1  # padding
    return ds, catalog, ctx, retrieval, stage, past, window, req, cands


def test_prerank_beats_retrieval_order_on_planted_signal(planted):
    ds, catalog, ctx, retrieval, stage, past, window, req, cands = planted
    m = stage.valid_metrics
    assert m["valid_users"] >= 30 and m["train_users"] >= 80
    assert m["ndcg@10"] > m["ndcg@10_input_order"] + 0.25, m
    assert m["impression_negatives"] == 0  # by default the rows are the retrieval's candidates only
    # the improvement comes from a feature the retrieval score ignores: ANN features alone cannot beat it
    only_ann = PrerankStage(PrerankConfig(**{**CFG.__dict__, "features": ("ann_score", "ann_rank")})).fit(
        fit_context(ds, catalog, window, past, retrieval, ctx))
    assert only_ann.valid_metrics["ndcg@10"] < m["ndcg@10_input_order"] + 0.08  # noise fit only
    assert only_ann.valid_metrics["ndcg@10"] < m["ndcg@10"] - 0.2
    imp = dict(zip(stage.feature_names, stage.booster.feature_importance("gain")))
    assert max(imp, key=imp.get) in ("user_cat_affinity", "co_engagement", "ppr")  # category / graph signals
    # the planted feature alone (next to the ANN features) recovers the signal
    with_aff = PrerankStage(PrerankConfig(
        **{**CFG.__dict__, "features": ("ann_score", "ann_rank", "user_cat_affinity")})).fit(
        fit_context(ds, catalog, window, past, retrieval, ctx))
    assert with_aff.valid_metrics["ndcg@10"] > m["ndcg@10_input_order"] + 0.25


def test_score_contract_and_batch_invariance(planted):
    ds, catalog, ctx, retrieval, stage, past, window, req, cands = planted
    out = stage.score(req, cands)
    s = out["score"]
    assert set(out) == {"score"} and s.dtype == np.float64 and s.shape == cands.items.shape
    assert np.isneginf(s[cands.items < 0]).all() and np.isfinite(s[cands.items >= 0]).all()
    for b in (0, 3, 17):
        np.testing.assert_array_equal(stage.score(req.take(np.array([b])), cands.take(np.array([b])))["score"][0],
                                      s[b])


def test_save_load_round_trip_identical_scores(planted, tmp_path):
    ds, catalog, ctx, retrieval, stage, past, window, req, cands = planted
    stage.save(tmp_path / "prerank")
    back = PrerankStage.load(tmp_path / "prerank", catalog)
    np.testing.assert_array_equal(back.score(req, cands)["score"], stage.score(req, cands)["score"])
    assert back.feature_names == stage.feature_names and back.cfg == stage.cfg
    assert back.valid_metrics["ndcg@10"] == pytest.approx(stage.valid_metrics["ndcg@10"])


def _edit_model_names(path, old: str, new: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("feature_names="):
            names = line[len("feature_names="):].split()
            lines[i] = "feature_names=" + " ".join(new if n == old else n for n in names) + "\n"
    path.write_text("".join(lines))


def test_load_refuses_mismatched_feature_names(planted, tmp_path):
    ds, catalog, ctx, retrieval, stage, past, window, req, cands = planted
    names = stage.feature_names
    # 1. the saved list's order differs from the model's columns
    stage.save(tmp_path / "a")
    swapped = [names[1], names[0]] + names[2:]
    (tmp_path / "a" / "features.json").write_text(json.dumps({"names": swapped}))
    with pytest.raises(ValueError, match=f"order differs at column 0: model has '{names[0]}', saved list has "
                                         f"'{names[1]}'"):
        PrerankStage.load(tmp_path / "a", catalog)
    # 2. the model was trained on a feature the saved list does not have
    stage.save(tmp_path / "b")
    _edit_model_names(tmp_path / "b" / "model.txt", "pop_all", "pop_old")
    with pytest.raises(ValueError, match=r"missing from the model: \['pop_all'\].*in the model but not saved: "
                                         r"\['pop_old'\]"):
        PrerankStage.load(tmp_path / "b", catalog)
    # 3. model and list agree, but the registry has no such feature (renamed or removed since training)
    stage.save(tmp_path / "c")
    _edit_model_names(tmp_path / "c" / "model.txt", "pop_all", "pop_old")
    (tmp_path / "c" / "features.json").write_text(
        json.dumps({"names": ["pop_old" if n == "pop_all" else n for n in names]}))
    with pytest.raises(ValueError, match="registry does not provide.*'pop_old'"):
        PrerankStage.load(tmp_path / "c", catalog)


def test_fit_is_deterministic(planted):
    ds, catalog, ctx, retrieval, stage, past, window, req, cands = planted
    again = PrerankStage(CFG).fit(fit_context(ds, catalog, window, past, retrieval, ctx))
    assert again.booster.model_to_string() == stage.booster.model_to_string()


def test_two_lightgbm_threads_grow_the_same_trees(planted):
    """configs/default.yaml trains the pre-ranker on 2 threads; its README claim is that the trees (and so every
    metric) are those of 1 thread: column-wise histograms, one thread per feature, `deterministic`."""
    ds, catalog, ctx, retrieval, stage, past, window, req, cands = planted
    # without collab_score, which alone ranks this world's categories (the booster stops at one tree)
    names = tuple(n for n in stage.feature_names if n != "collab_score")
    one, two = (PrerankStage(dataclasses.replace(CFG, num_threads=t, features=names)).fit(
        fit_context(ds, catalog, window, past, retrieval, ctx)) for t in (1, 2))

    def trees(booster) -> str:  # the model without its parameters section (which names num_threads)
        return booster.model_to_string().split("\nparameters:")[0]

    assert one.booster.num_trees() > 5
    assert trees(two.booster) == trees(one.booster)
    np.testing.assert_array_equal(two.score(req, cands)["score"], one.score(req, cands)["score"])


def test_ranking_data_labels_and_extras(planted):
    ds, catalog, ctx, retrieval, stage, past, window, req, cands = planted
    data = build_ranking_data(ds, catalog, retrieval, ctx, window, past,
                              PrerankConfig(**{**CFG.__dict__, "include_impressions": True}))
    assert data.extra.any() and not set(data.names) & set(CANDIDATE_SOURCE_FEATURES)
    off = data.offsets
    pos = positives(window, "click")
    for g in range(0, len(data.group), 25):
        rows = slice(off[g], off[g + 1])
        assert data.y[rows].max() >= 1, "groups without a positive are dropped"
        clicked = set(catalog.items.encode(pos[pos["user_id"] == data.user_ids[g]]["item_id"].to_numpy()))
        extra = data.extra[rows]
        assert data.y[rows][extra].max(initial=0) == 0, "impression extras are negatives"
        assert (data.position[rows][~extra] < K).all()  # the served pool, no more
        assert len(clicked) >= int((data.y[rows] > 0).sum())
    with pytest.raises(ValueError, match="gains"):
        build_ranking_data(ds, catalog, retrieval, ctx, window, past, PrerankConfig(gains={"like": 1.0}))


def test_group_ndcg_known_answers():
    y = np.array([0, 1, 0, 2])
    gain = [0.0, 1.0, 3.0]
    ideal = 3.0 + 1.0 / np.log2(3)
    assert group_ndcg(np.array([4.0, 3, 2, 1]), y, np.array([4]), gain, 10)[0] == pytest.approx(
        (1.0 / np.log2(3) + 3.0 / np.log2(5)) / ideal)
    assert group_ndcg(np.array([0.0, 1, 0, 2]), y, np.array([4]), gain, 2)[0] == pytest.approx(1.0)
    assert group_ndcg(np.zeros(2), np.zeros(2, int), np.array([2]), gain, 5)[0] == 1.0


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="prerank.valid_fraction"):
        PrerankConfig(valid_fraction=1.0)
    with pytest.raises(ValueError, match="prerank.features: duplicate"):
        PrerankConfig(features=("ppr", "ppr"))


# ------------------------------------------------------------------------------------------------------------
# On the synthetic world with the real retrieval stage, inside the engine
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_engine(tmp_path_factory):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from recsys.configlib import SplitConfig
    from recsys.data.split import split_dataset
    from recsys.data.synthetic import synthesize
    from recsys.retrieval.stage import RetrievalConfig, RetrievalStage
    from recsys.retrieval.train import TwoTowerConfig

    ds = synthesize("tiny", 0, tmp_path_factory.mktemp("world") / "tiny")
    split = split_dataset(ds, SplitConfig())
    catalog = Catalog.from_dataset(ds, train=split["train"])
    rcfg = RetrievalConfig(two_tower=TwoTowerConfig(dim=16, emb_dim=16, feature_dim=4, hidden=(32,), max_epochs=2,
                                                    batch_size=256, threads=1), index_factory="Flat", index_threads=1)
    retrieval = RetrievalStage(rcfg).fit(fit_context(ds, catalog, split["train"], split["train"].iloc[:0],
                                                     valid=split["prerank"]))
    pcfg = PrerankConfig(num_threads=1, n_estimators=30, min_data_in_leaf=5, gains={"click": 1.0, "like": 1.0})
    ctx = FeatureContext.fit(ds, catalog, split["train"], pcfg.graph, pcfg.feature_params)
    stage = PrerankStage(pcfg).fit(fit_context(ds, catalog, split["prerank"], split.before("prerank"),
                                               upstream(retrieval, 50, catalog=catalog), ctx))
    return ds, split, catalog, retrieval, stage, pcfg


def test_in_engine_on_synthetic_world(synthetic_engine):
    from recsys.engine import Engine

    ds, split, catalog, retrieval, stage, pcfg = synthetic_engine
    assert stage.valid_metrics["label_gain"] == [0.0, 1.0, 2.0]  # click, click + like
    test = split["test"].drop_duplicates("user_id").iloc[:30]
    context = {c: test[c].to_numpy() for c in ds.schema.context_columns}
    req = catalog.requests(test["user_id"].to_numpy(), test["timestamp"].to_numpy(),
                           positives(split.before("test"), "click"), context=context)
    engine = Engine(retrieval, [(stage, 20)], retrieve_k=50, catalog=catalog)
    res = engine.rank(req, 10)
    assert res.items.shape == (30, 10) and "prerank" in res.stage_scores and "prerank" in res.stages
    s = res.stage_scores["prerank"]
    ok = res.items >= 0
    assert ok.all()
    assert (np.diff(s, axis=1) <= 0).all(), "final list ordered by the pre-ranker"
    cands = retrieval.retrieve(req, 50)
    for b in range(30):
        assert set(res.stages["prerank"][b]) <= set(cands.items[b])
    # real candidates (ANN + popularity): a user's features alone equal the batch's
    from recsys.features import assemble

    x = assemble(req, cands, stage.ctx, stage.feature_names)
    for b in (0, 7, 29):
        np.testing.assert_array_equal(assemble(req.take(np.array([b])), cands.take(np.array([b])), stage.ctx,
                                               stage.feature_names)[0], x[b])


def test_appended_impressions_get_the_two_tower_score(synthetic_engine):
    """_append_extras (also the heavy ranker's, examples: both) scores appended items with the two-tower."""
    from recsys.prerank.stage import _append_extras
    from recsys.types import Ragged

    _, split, catalog, retrieval, _, _ = synthetic_engine
    first = split["prerank"].drop_duplicates("user_id").iloc[:20]
    req = catalog.requests(first["user_id"].to_numpy(), first["timestamp"].to_numpy(),
                           positives(split.before("prerank"), "click"))
    cands = retrieval.retrieve(req, 20)
    extra = [np.setdiff1d(np.arange(catalog.n_items), cands.items[b])[:3] for b in range(len(req))]
    out = _append_extras(cands, Ragged(np.r_[0, np.cumsum([len(e) for e in extra])], np.concatenate(extra)),
                         req, retrieval)
    assert out.names[-1] == "impression" and (out.source[:, 20:] == len(out.names) - 1).all()
    warm = ~np.asarray(retrieval.is_cold(req), bool)
    assert warm.any() and np.isfinite(out.scores["ann"][warm, 20:]).all()


def serving_impossible_rows(data) -> int:
    """Rows whose source features no served candidate can have: a served candidate comes from exactly one
    source (one ``src_*`` is 1), at least one source scored it (``n_sources`` >= 1), and it has an ANN rank
    exactly when it has an ANN score."""
    col = {n: data.X[:, j] for j, n in enumerate(data.names)}
    bad = np.zeros(len(data.y), bool)
    flags = [col[f"src_{s}"] for s in ("ann", "popularity", "graph") if f"src_{s}" in col]
    if flags:
        bad |= np.sum(flags, axis=0) != 1
    if "n_sources" in col:
        bad |= ~(col["n_sources"] >= 1)
    if "ann_score" in col and "ann_rank" in col:
        bad |= np.isnan(col["ann_score"]) != np.isnan(col["ann_rank"])
    return int(bad.sum())


def test_no_training_row_has_a_source_pattern_serving_never_shows(synthetic_engine):
    """Appended impression negatives used to carry all-zero src_* columns (and n_sources from their two-tower
    score alone), a pattern no served candidate has: "no source flag => negative" was a free shortcut."""
    ds, split, catalog, retrieval, stage, pcfg = synthetic_engine

    def build(cfg):
        return build_ranking_data(ds, catalog, upstream(retrieval, 50, catalog=catalog), stage.ctx, split["prerank"],
                                  split.before("prerank"), cfg)

    data = build(pcfg)  # the defaults: every feature, the source ones included
    assert {"src_ann", "src_popularity", "n_sources", "ann_rank"} <= set(data.names)
    assert serving_impossible_rows(data) == 0 and not data.extra.any()
    with_imp = build(dataclasses.replace(pcfg, include_impressions=True))  # impressions: no source features
    assert with_imp.extra.sum() > 100 and not set(with_imp.names) & set(CANDIDATE_SOURCE_FEATURES)
    assert len(with_imp.names) == len(data.names) - len(CANDIDATE_SOURCE_FEATURES)
    with pytest.raises(ValueError, match=r"prerank\.include_impressions: features \['ann_score', 'src_ann'\]"):
        build(dataclasses.replace(pcfg, include_impressions=True, features=("ann_score", "src_ann", "ppr")))


def test_several_cut_points_pool_their_groups_and_hold_out_whole_users(synthetic_engine, monkeypatch):
    """Two cut points (the pre-rank and the rank windows, each with its own history and upstream): the rows
    are the two windows' query groups one after another, exactly as built alone, and the early-stopping
    holdout takes whole users, so no user is in both the training and the validation groups."""
    import recsys.prerank.stage as ps
    from recsys.prerank.stage import concat_ranking_data
    from recsys.stages.base import FitContext

    ds, split, catalog, retrieval, stage, pcfg = synthetic_engine
    up = upstream(retrieval, 50, catalog=catalog)
    parts = [build_ranking_data(ds, catalog, up, stage.ctx, split[w], split.before(w), pcfg)
             for w in ("prerank", "rank")]
    both = concat_ranking_data(parts)
    assert len(both.group) == sum(len(p.group) for p in parts) and len(both.y) == sum(len(p.y) for p in parts)
    second = both.take_groups(np.arange(len(parts[0].group), len(both.group)))
    np.testing.assert_array_equal(second.X, parts[1].X)
    np.testing.assert_array_equal(second.y, parts[1].y)
    assert list(second.user_ids) == list(parts[1].user_ids)
    assert set(parts[0].user_ids) & set(parts[1].user_ids)  # users active in both windows: a group at each

    seen = {}
    real = ps.train_booster

    def spy(train, valid, cfg, seed=None, at=None):
        seen["train"], seen["valid"] = train, valid
        return real(train, valid, cfg, seed=seed, at=at)

    monkeypatch.setattr(ps, "train_booster", spy)
    cuts = [FitContext(ds, catalog, split, w, split.before(w), upstream=up, features=lambda _c: stage.ctx, k=30)
            for w in ("prerank", "rank")]
    fitted = PrerankStage(pcfg).fit(dataclasses.replace(cuts[1], earlier=(cuts[0],)))
    tr, va = seen["train"], seen["valid"]
    assert fitted.valid_metrics["cut_points"] == 2
    assert len(tr.group) + len(va.group) == len(both.group)
    assert not set(tr.user_ids) & set(va.user_ids) and len(va.group) > 0
