"""Feature registry and assembly: batch invariance, slow per-candidate references, missing values, save/load."""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from recsys.data.catalog import Catalog, positives
from recsys.data.schema import Dataset, col, make_schema, validate
from recsys.features import (
    POP_WINDOWS,
    REGISTRY,
    FeatureConfig,
    FeatureContext,
    assemble,
    available_features,
    describe,
    resolve,
)
from recsys.graph import co_engagement
from recsys.retrieval.sources import Candidates

START = 1_700_000_000
DAY = 86_400
N_ITEMS = 40
NO_CATEGORY = (3, 7)  # item rows without a category
NO_CREATED = (5, 11)  # item rows without a creation time
CUT = START + 14 * DAY  # train window: [START, CUT)


def make_dataset(seed: int = 0, has_impressions: bool = True) -> Dataset:
    rng = np.random.default_rng(seed)
    item_ids = 1000 + np.arange(N_ITEMS)
    cats = np.array([f"c{k}" for k in rng.integers(0, 5, N_ITEMS)], dtype=object)
    cats[list(NO_CATEGORY)] = None
    created = (START - rng.integers(0, 100 * DAY, N_ITEMS)).astype(np.float64)
    created[list(NO_CREATED)] = np.nan
    items = pd.DataFrame({"item_id": item_ids, "category": cats, "created_at": created,
                          "price": rng.lognormal(3, 0.5, N_ITEMS)})
    users = pd.DataFrame({"user_id": np.arange(1, 26), "segment": rng.choice(["a", "b", "c"], 25)})
    r = 900
    inter = pd.DataFrame({
        "user_id": rng.integers(1, 31, r),  # users 26..30 are not in the users table
        "item_id": rng.choice(item_ids, r),
        "timestamp": START + np.sort(rng.integers(0, 20 * DAY, r)),
        "hour": rng.integers(0, 24, r),
        "device": rng.choice(["desktop", "mobile"], r),
        "click": (rng.random(r) < 0.4).astype(np.int64),
    })
    src = rng.choice(item_ids, 30)
    dst = rng.choice(item_ids, 30)
    links = pd.DataFrame({"src": src[src != dst], "dst": dst[src != dst]})
    schema = make_schema(
        "features-test",
        interactions={"user_id": col("user_id"), "item_id": col("item_id"), "timestamp": col("timestamp"),
                      "hour": col("context", "categorical"), "device": col("context", "categorical"),
                      "click": col("label", "binary")},
        positive_label="click",
        users={"user_id": col("user_id"), "segment": col("categorical")},
        items={"item_id": col("item_id"), "category": col("categorical"), "created_at": col("numeric"),
               "price": col("numeric")},
        item_links={"src": col("src"), "dst": col("dst")},
        has_impressions=has_impressions,
    )
    return validate(Dataset(schema, inter, users, items, links))


@pytest.fixture(scope="module")
def world():
    ds = make_dataset()
    train = ds.interactions[ds.interactions["timestamp"] < CUT]
    catalog = Catalog.from_dataset(ds, train=train)
    ctx = FeatureContext.fit(ds, catalog, train, params=FeatureConfig(co_last_n=4, ppr_last_n=5, ppr_eps=1e-9))
    rng = np.random.default_rng(1)
    # users: known with history, known without users-table row (27), unknown to the catalogue (999: cold)
    user_ids = np.array([1, 2, 3, 27, 999, 5, 6, 7])
    b, c = len(user_ids), 12
    ts = CUT + DAY + 3600 * np.arange(b)
    context = {"hour": np.arange(b) + 5, "device": np.array(["mobile", "desktop", "tv", "mobile", "desktop",
                                                            "mobile", "desktop", "mobile"], dtype=object)}
    req = catalog.requests(user_ids, ts, positives(train, "click"), context=context)
    items = np.stack([rng.choice(N_ITEMS, c, replace=False) for _ in range(b)]).astype(np.int64)
    special = [NO_CATEGORY[0], NO_CREATED[0], NO_CATEGORY[1], NO_CREATED[1]]
    items[0] = special + list(rng.choice(np.setdiff1d(np.arange(N_ITEMS), special), c - 4, replace=False))
    items[2, -3:] = -1  # padding
    items[6, -1] = -1
    source = rng.integers(0, 3, (b, c)).astype(np.int8)
    source[items < 0] = -1
    names = ["ann", "graph", "popularity"]
    scores = {}
    for j, name in enumerate(names):
        s = rng.random((b, c)).astype(np.float32)
        s[(source != j) & (rng.random((b, c)) < 0.7)] = np.nan  # other sources may also have scored it
        s[source == j] = rng.random(int((source == j).sum()))
        s[items < 0] = np.nan
        scores[name] = s
    scores["ann"][1, 3] = scores["ann"][1, 5] = 0.5  # a tie in the ANN score
    cands = Candidates(items, source, scores, names)
    return ds, train, catalog, ctx, req, cands


def col_of(x: np.ndarray, name: str, names: list[str]) -> np.ndarray:
    return x[:, :, names.index(name)]


# ------------------------------------------------------------------------------------------------------------


def test_batch_invariance_alone_vs_batch_exact(world):
    ds, train, catalog, ctx, req, cands = world
    names = available_features(ctx)
    x = assemble(req, cands, ctx)
    assert x.shape == (len(req), cands.items.shape[1], len(names)) and x.dtype == np.float32
    for b in range(len(req)):
        alone = assemble(req.take(np.array([b])), cands.take(np.array([b])), ctx)
        np.testing.assert_array_equal(alone[0], x[b], err_msg=f"request {b} alone differs from the batch")
    perm = np.array([4, 2, 7, 0, 1, 6, 5, 3])
    np.testing.assert_array_equal(assemble(req.take(perm), cands.take(perm), ctx), x[perm])


def test_user_features_without_external_ids_use_the_catalogue(world):
    ds, train, catalog, ctx, req, cands = world
    names = available_features(ctx)
    x = assemble(req, cands, ctx)
    y = assemble(dataclasses.replace(req, user_ids=None), cands, ctx)
    known = req.users < catalog.users.oov
    np.testing.assert_array_equal(col_of(y, "user.segment", names)[known], col_of(x, "user.segment", names)[known])


def test_user_unknown_to_the_catalogue_but_in_the_users_table(world):
    ds, train, catalog, ctx, req, cands = world
    catalog2 = Catalog.from_dataset(ds, train=train[train["user_id"] != 4])
    ctx2 = FeatureContext.fit(ds, catalog2, train)
    r = catalog2.requests(np.array([4, 999]), np.array([CUT, CUT]), positives(train, "click"))
    assert (r.users == catalog2.users.oov).all()
    c = cands.take(np.array([0, 1]))
    seg = assemble(r, c, ctx2, ["user.segment"])[:, :, 0]
    want = ctx2.user_columns[0].encode(ds.users.loc[ds.users["user_id"] == 4, "segment"].to_numpy())[0]
    assert np.isfinite(want) and (seg[0] == want).all()
    assert np.isnan(seg[1]).all()  # 999: in neither


def test_popularity_against_slow_reference(world):
    ds, train, catalog, ctx, req, cands = world
    names = available_features(ctx)
    x = assemble(req, cands, ctx)
    pos = positives(train, "click")
    t_end = train["timestamp"].max()
    for name, days in POP_WINDOWS:
        got = col_of(x, name, names)
        for b, c in zip(*np.nonzero(cands.items >= 0)):
            item_id = catalog.items.ids[cands.items[b, c]]
            rows = pos[pos["item_id"] == item_id]
            if days is not None:
                rows = rows[rows["timestamp"] > t_end - days * DAY]
            assert got[b, c] == pytest.approx(np.log1p(len(rows)), rel=1e-6), (name, b, c)


def test_item_age_and_category_affinity_against_slow_reference(world):
    ds, train, catalog, ctx, req, cands = world
    names = available_features(ctx)
    x = assemble(req, cands, ctx)
    items_df = ds.items.set_index("item_id")
    age, aff = col_of(x, "item_age_days", names), col_of(x, "user_cat_affinity", names)
    for b, c in zip(*np.nonzero(cands.items >= 0)):
        item_id = catalog.items.ids[cands.items[b, c]]
        created = items_df.loc[item_id, "created_at"]
        want = (req.timestamps[b] - created) / DAY
        if np.isnan(want):
            assert np.isnan(age[b, c])
        else:
            assert age[b, c] == pytest.approx(want, rel=1e-6)
        hist_cats = [items_df.loc[catalog.items.ids[h], "category"] for h in req.history.row(b)]
        hist_cats = [h for h in hist_cats if not pd.isna(h)]
        cat = items_df.loc[item_id, "category"]
        if pd.isna(cat) or not hist_cats:
            assert np.isnan(aff[b, c])
        else:
            assert aff[b, c] == pytest.approx(sum(h == cat for h in hist_cats) / len(hist_cats), rel=1e-6)


def test_co_engagement_against_slow_reference_and_graph_module(world):
    ds, train, catalog, ctx, req, cands = world
    names = available_features(ctx)
    got = col_of(assemble(req, cands, ctx), "co_engagement", names)
    dense = ctx.graph.toarray().astype(np.float64)
    n_last = ctx.params.co_last_n
    for b, c in zip(*np.nonzero(cands.items >= 0)):
        hist = req.history.row(b)[-n_last:]
        assert got[b, c] == pytest.approx(sum(dense[h, cands.items[b, c]] for h in hist), rel=1e-6, abs=1e-9)
    other = co_engagement(ctx.graph, req.history, n_last, cands.items)  # recsys.graph's sparse-product version
    valid = cands.items >= 0
    np.testing.assert_allclose(got[valid], other[valid], rtol=1e-6)
    assert (got[valid] > 0).any(), "the fixture should have some co-engagement"


def test_ann_rank_and_sources_against_slow_reference(world):
    ds, train, catalog, ctx, req, cands = world
    names = available_features(ctx)
    x = assemble(req, cands, ctx)
    rank = col_of(x, "ann_rank", names)
    ann = cands.scores["ann"]
    for b in range(len(req)):
        cols = [c for c in range(ann.shape[1]) if cands.items[b, c] >= 0 and not np.isnan(ann[b, c])]
        order = sorted(cols, key=lambda c: (-float(ann[b, c]), c))
        for r, c in enumerate(order):
            assert rank[b, c] == r
    valid = cands.items >= 0
    assert np.isnan(rank[valid & np.isnan(ann)]).all()
    assert rank[1, 3] == rank[1, 5] - 1  # tie: lower column first
    for j, name in enumerate(cands.names):
        np.testing.assert_array_equal(col_of(x, f"src_{name}", names)[valid], (cands.source == j)[valid])
    n_src = sum((~np.isnan(cands.scores[n])).astype(int) for n in cands.names)
    np.testing.assert_array_equal(col_of(x, "n_sources", names)[valid], n_src[valid])


def test_ppr_against_networkx(world):
    ds, train, catalog, ctx, req, cands = world
    names = available_features(ctx)
    got = col_of(assemble(req, cands, ctx), "ppr", names)
    g = nx.DiGraph()
    g.add_nodes_from(range(ctx.n_items))
    coo = ctx.graph.tocoo()
    g.add_weighted_edges_from(zip(coo.row.tolist(), coo.col.tolist(), coo.data.astype(float).tolist()))
    n = ctx.n_items
    global_pr = nx.pagerank(g, alpha=ctx.params.ppr_damping, tol=1e-12, max_iter=1000)
    np.testing.assert_allclose(ctx.pagerank, [global_pr[i] for i in range(n)], atol=1e-9)
    checked_warm = False
    for b in range(len(req)):
        seeds = req.history.row(b)[-ctx.params.ppr_last_n:]
        if len(seeds):
            pers = {i: 0.0 for i in range(n)}
            for s in seeds:
                pers[int(s)] += 1.0
            ref = nx.pagerank(g, alpha=ctx.params.ppr_damping, personalization=pers, tol=1e-12, max_iter=1000)
            checked_warm = True
        else:
            ref = global_pr  # documented fallback: empty history -> global PageRank
        for c in np.flatnonzero(cands.items[b] >= 0):
            # forward push (eps 1e-9 here) underestimates by at most eps * sum(max(outdeg, 1)) in L1
            assert got[b, c] == pytest.approx(n * ref[int(cands.items[b, c])], abs=1e-4), (b, c)
    assert checked_warm


def test_missing_values_are_nan_not_garbage(world):
    ds, train, catalog, ctx, req, cands = world
    names = available_features(ctx)
    x = assemble(req, cands, ctx)
    valid = cands.items >= 0
    assert np.isnan(x[~valid]).all(), "padding must be NaN in every column"

    cold = int(np.flatnonzero(req.user_ids == 999)[0])
    assert req.history.lengths()[cold] == 0 and req.users[cold] == catalog.users.oov
    v = valid[cold]
    for name in ("user_cat_affinity", "user_recency_days", "user.segment"):
        assert np.isnan(col_of(x, name, names)[cold, v]).all(), name
    for name, want in (("user_history_len", 0.0), ("co_engagement", 0.0), ("user_train_events", 0.0)):
        np.testing.assert_array_equal(col_of(x, name, names)[cold, v], want)
    np.testing.assert_allclose(col_of(x, "ppr", names)[cold, v],
                               ctx.n_items * ctx.pagerank[cands.items[cold, v]], rtol=1e-6)

    no_table = int(np.flatnonzero(req.user_ids == 27)[0])  # known to the catalogue, not in the users table
    assert np.isnan(col_of(x, "user.segment", names)[no_table, valid[no_table]]).all()
    assert (col_of(x, "user_train_events", names)[no_table, valid[no_table]] > 0).all()

    # row 0 holds the items without a category (cols 0, 2) and without a creation time (cols 1, 3)
    assert np.isnan(col_of(x, "item_category", names)[0, [0, 2]]).all()
    assert np.isnan(col_of(x, "user_cat_affinity", names)[0, [0, 2]]).all()
    assert np.isnan(col_of(x, "item_age_days", names)[0, [1, 3]]).all()
    assert np.isfinite(col_of(x, "item_age_days", names)[0, 4:]).all()

    dev = col_of(x, "ctx.device", names)
    assert np.isnan(dev[2, valid[2]]).all(), "an unseen context level ('tv') is NaN"
    assert np.isfinite(dev[0, valid[0]]).all()
    no_ctx = assemble(dataclasses.replace(req, context={}), cands, ctx)
    assert np.isnan(col_of(no_ctx, "ctx.hour", names)[valid]).all()
    assert np.isnan(col_of(no_ctx, "ctx.device", names)[valid]).all()

    always = ["pop_1d", "pop_7d", "pop_all", "item_ctr", "item_pagerank", "ppr", "co_engagement", "user_history_len",
              "user_train_events", "n_sources", "src_ann", "item.price", "ctx.hour"]
    for name in always:
        assert np.isfinite(col_of(x, name, names)[valid]).all(), f"{name} must be finite at every candidate"


def test_ctr_is_nan_without_impressions():
    ds = make_dataset(has_impressions=False)
    train = ds.interactions[ds.interactions["timestamp"] < CUT]
    catalog = Catalog.from_dataset(ds, train=train)
    ctx = FeatureContext.fit(ds, catalog, train)
    assert np.isnan(ctx.ctr).all()
    ds2 = make_dataset(has_impressions=True)
    ctx2 = FeatureContext.fit(ds2, catalog, train)
    assert np.isfinite(ctx2.ctr).all() and (ctx2.ctr > 0).all() and (ctx2.ctr < 1).all()


@pytest.mark.parametrize("method", ["itemknn", "ease"])
def test_collab_score_is_the_item_item_score_of_the_whole_distinct_history(world, method):
    """collab_score = sum over the distinct known history of the pruned item-item weights (item-kNN cosine or
    EASE), fitted on the context's window (every engaging user, those outside the catalogue too); without a
    model (collab.method none) it is not a default feature and NaN when asked for."""
    from recsys.collab import CollabConfig, cosine_topn, ease_weights, positive_matrix, prune_rows

    ds, train, catalog, ctx, req, cands = world
    ctx = FeatureContext.fit(ds, catalog, train, params=dataclasses.replace(
        ctx.params, collab=CollabConfig(method=method, l2=20.0, n_neighbors=6)))
    got = col_of(assemble(req, cands, ctx), "collab_score", available_features(ctx))
    pos = train[train["click"] > 0]
    items = catalog.items.encode(pos["item_id"].to_numpy())
    ok = items < catalog.n_items
    x = positive_matrix(pos["user_id"].to_numpy()[ok], items[ok], catalog.n_items)
    p = ctx.params.collab
    w = (cosine_topn(x, p.n_neighbors) if method == "itemknn" else prune_rows(ease_weights(x, p.l2), p.n_neighbors)).toarray()
    for b, c in zip(*np.nonzero(cands.items >= 0)):
        hist = {h for h in req.history.row(b) if 0 <= h < catalog.n_items}
        assert got[b, c] == pytest.approx(sum(w[h, cands.items[b, c]] for h in hist), rel=1e-5, abs=1e-6)
    assert (got[cands.items >= 0] != 0).any()

    off = FeatureContext.fit(ds, catalog, train, params=FeatureConfig(collab=CollabConfig(method="none")))
    assert off.collab is None
    assert "collab_score" not in available_features(off)  # not a default feature without its model
    assert np.isnan(assemble(req, cands, off, ["collab_score"])).all()


def test_context_save_load_round_trip(world, tmp_path):
    ds, train, catalog, ctx, req, cands = world
    ctx.save(tmp_path / "ctx")
    back = FeatureContext.load(tmp_path / "ctx", catalog)
    np.testing.assert_array_equal(assemble(req, cands, back), assemble(req, cands, ctx))
    assert available_features(back) == available_features(ctx)
    assert back.params == ctx.params
    other = Catalog.from_dataset(ds, train=train.iloc[:50])
    with pytest.raises(ValueError, match="users"):
        FeatureContext.load(tmp_path / "ctx", other)


def test_unknown_and_duplicate_feature_names(world):
    ds, train, catalog, ctx, req, cands = world
    with pytest.raises(ValueError, match="unknown feature name.*'nope'.*available: ann_score"):
        assemble(req, cands, ctx, ["ann_score", "nope"])
    with pytest.raises(ValueError, match="duplicate"):
        resolve(["ppr", "ppr"], ctx)
    sub = assemble(req, cands, ctx, ["ppr", "pop_all"])
    full = assemble(req, cands, ctx)
    names = available_features(ctx)
    np.testing.assert_array_equal(sub, full[:, :, [names.index("ppr"), names.index("pop_all")]])


def test_registry_is_documented(world):
    ctx = world[3]
    text = describe(ctx)
    for name in available_features(ctx):
        assert f"`{name}`" in text
    for f in REGISTRY.values():
        assert len(f.description) > 20
    assert {"ctx.hour", "ctx.device", "user.segment", "item.price"} <= set(available_features(ctx))
    assert "item.category" not in available_features(ctx) and "item.created_at" not in available_features(ctx)


def test_feature_config_rejects_bad_values():
    with pytest.raises(ValueError, match="ppr_eps"):
        FeatureConfig(ppr_eps=0)
