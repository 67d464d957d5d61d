"""Baselines: the shared ranking contract for every model, known answers, and oracles for the fast paths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from offline_eval.baselines import (
    BASELINES,
    EASEBaseline,
    SVDBaseline,
    _rowwise_matmul,
    cosine_topn,
    ease_weights,
    make_baseline,
)
from recsys.data.catalog import Catalog, positives
from recsys.data.schema import Dataset, TableSpec, col, make_schema
from recsys.types import Ragged, Ranker, Requests

DAY = 86400
T0 = 1_700_000_000

# small parameters so every fit takes milliseconds
SMALL = {
    "random": {},
    "popularity": {},
    "itemknn": {"n_neighbors": 5},
    "svd": {"n_factors": 4, "n_epochs": 5},
    "ease": {"l2": 10.0},
    "als": {"factors": 4, "iterations": 5},
    "bpr": {"factors": 4, "iterations": 20},
}


def binary_schema(has_impressions: bool = False):
    return make_schema(
        "tiny",
        {
            "user_id": col("user_id"),
            "item_id": col("item_id"),
            "timestamp": col("timestamp"),
            "click": col("label", "binary"),
        },
        positive_label="click",
        has_impressions=has_impressions,
    )


def rating_schema():
    cols = {
        "user_id": col("user_id"),
        "item_id": col("item_id"),
        "timestamp": col("timestamp"),
        "rating": col("label", "graded"),
        "click": col("label", "binary"),
    }
    schema = make_schema("tiny-ratings", cols, positive_label="click")
    # the declared range is set after validation: make_schema's round trip through recsys.config.from_dict
    # rejects a (lo, hi) range at the time of writing (see the report on recsys/config.py _convert)
    cols["rating"] = col("label", "graded", range=(0.5, 5.0))
    table = dataclasses.replace(schema.tables["interactions"], columns=cols)
    return dataclasses.replace(schema, tables={"interactions": table})


def build(df: pd.DataFrame, schema, items: list | None = None) -> tuple[Dataset, Catalog]:
    items_df = None
    if items is not None:
        items_df = pd.DataFrame({"item_id": items})
        tables = dict(schema.tables, items=TableSpec("items.parquet", {"item_id": col("item_id")}))
        schema = dataclasses.replace(schema, tables=tables)
    ds = Dataset(schema=schema, interactions=df.reset_index(drop=True), items=items_df)
    return ds, Catalog.from_dataset(ds)


@pytest.fixture(scope="module")
def world():
    """20 users x 15 items (string ids), random positives with times, plus two items nobody touched."""
    rng = np.random.default_rng(7)
    rows = []
    for u in range(20):
        for i in rng.choice(13, size=rng.integers(2, 7), replace=False):
            rows.append((f"u{u}", f"i{i}", T0 + int(rng.integers(0, 50 * DAY)), 1))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "click"])
    ds, cat = build(df, binary_schema(), items=[f"i{i}" for i in range(15)])
    return ds, cat


def fitted(name: str, world, seed: int = 0):
    ds, cat = world
    return make_baseline(name, seed=seed, **SMALL[name]).fit(ds.interactions, cat, ds.schema)


def requests_for(world, users: list[str]) -> Requests:
    ds, cat = world
    return cat.requests(
        np.array(users, dtype=object), np.full(len(users), T0 + 60 * DAY), positives(ds.interactions, "click")
    )


ALL = sorted(BASELINES)


# ----------------------------------------------------------------------------------------------------------
# the shared contract


@pytest.mark.parametrize("name", ALL)
def test_contract_k_items_without_excluded(name, world):
    model = fitted(name, world)
    assert isinstance(model, Ranker) and model.name == name
    req = requests_for(world, [f"u{u}" for u in range(20)])
    res = model.rank(req, 4)
    assert res.items.shape == (20, 4) and res.scores.shape == (20, 4)
    assert (res.items >= 0).all() and np.isfinite(res.scores).all()
    assert set(res.stage_scores) == {name}
    np.testing.assert_array_equal(res.stage_scores[name], res.scores)
    for b in range(20):
        assert not set(res.items[b]) & set(req.exclude.row(b))
        assert len(set(res.items[b])) == 4
        assert (np.diff(res.scores[b]) <= 0).all()  # best first
    # the returned scores are the model's scores of those items
    full = model.score(req)
    assert full.shape == (20, 15) and full.dtype == np.float64
    np.testing.assert_array_equal(np.take_along_axis(full, res.items, axis=1), res.scores)


@pytest.mark.parametrize("name", ALL)
def test_contract_k_beyond_catalogue_pads(name, world):
    model = fitted(name, world)
    req = requests_for(world, ["u0", "u1", "u2"])
    res = model.rank(req, 20)
    assert res.items.shape == (3, 20)
    for b in range(3):
        n_ok = 15 - len(set(req.exclude.row(b)))
        assert (res.items[b, :n_ok] >= 0).all() and len(set(res.items[b, :n_ok])) == n_ok
        assert (res.items[b, n_ok:] == -1).all() and np.isnan(res.scores[b, n_ok:]).all()


@pytest.mark.parametrize("name", ALL)
def test_contract_empty_history_and_oov_user(name, world):
    ds, cat = world
    model = fitted(name, world)
    req = Requests(
        users=np.array([0, cat.users.oov, cat.users.oov]),
        timestamps=np.full(3, T0 + 60 * DAY),
        history=Ragged.from_lists([[], [], [0, 3, 5]]),
        exclude=Ragged.from_lists([[], [], [0, 3, 5]]),
    )
    res = model.rank(req, 5)
    assert res.items.shape == (3, 5) and (res.items >= 0).all() and np.isfinite(res.scores).all()
    assert not set(res.items[2]) & {0, 3, 5}


@pytest.mark.parametrize("name", ALL)
def test_contract_batch_independence(name, world):
    """Ranking a batch equals ranking its users one by one and in uneven shards (bit-identical)."""
    ds, cat = world
    model = fitted(name, world)
    req = requests_for(world, [f"u{u}" for u in range(20)] + ["stranger"])
    whole = model.rank(req, 6)
    singles = [model.rank(req.take(np.array([b])), 6) for b in range(len(req))]
    np.testing.assert_array_equal(np.concatenate([r.items for r in singles]), whole.items)
    np.testing.assert_array_equal(np.concatenate([r.scores for r in singles]), whole.scores)
    shards = [model.rank(part, 6) for part in req.shards(7)]
    np.testing.assert_array_equal(np.concatenate([r.scores for r in shards]), whole.scores)


@pytest.mark.parametrize("name", ALL)
def test_contract_deterministic_for_seed(name, world):
    req = requests_for(world, [f"u{u}" for u in range(20)])
    a = fitted(name, world, seed=3).rank(req, 5)
    b = fitted(name, world, seed=3).rank(req, 5)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_rowwise_matmul_is_independent_of_batch_size():
    """Guards sharded evaluation: plain ``a @ b`` gives 1-ulp different rows for 1 vs 40 rows on OpenBLAS."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((40, 64)), rng.standard_normal((64, 500))
    whole = _rowwise_matmul(a, b, row_block=16, col_block=300)  # several row and column tiles
    np.testing.assert_allclose(whole, a @ b, rtol=1e-12, atol=1e-12)
    seq = np.zeros_like(whole)  # slow reference: the sequential sum over d, element by element order
    for d in range(64):
        seq = seq + a[:, d, None] * b[d]
    np.testing.assert_array_equal(whole, seq)
    for size in (1, 7, 33):
        parts = np.concatenate([_rowwise_matmul(a[s : s + size], b) for s in range(0, 40, size)])
        np.testing.assert_array_equal(parts, whole)


def test_random_seed_changes_scores_and_is_uniform(world):
    req = requests_for(world, [f"u{u}" for u in range(20)])
    s0, s1 = fitted("random", world, seed=0).score(req), fitted("random", world, seed=1).score(req)
    assert not np.array_equal(s0, s1)
    assert ((s0 >= 0) & (s0 < 1)).all()
    # a different request time gives a different list for the same user
    later = Requests(req.users, req.timestamps + 1, req.history, req.exclude)
    assert not np.array_equal(s0, fitted("random", world, seed=0).score(later))
    # roughly uniform: mean of many scores near 1/2
    big = Requests(np.arange(2000) % 21, np.arange(2000), Ragged.empty(2000))
    assert abs(fitted("random", world).score(big).mean() - 0.5) < 0.01


def test_score_before_fit_and_bad_k(world):
    with pytest.raises(RuntimeError, match="fit"):
        make_baseline("popularity").score(requests_for(world, ["u0"]))
    with pytest.raises(ValueError, match="k must be"):
        fitted("popularity", world).rank(requests_for(world, ["u0"]), 0)


def test_make_baseline_errors():
    with pytest.raises(ValueError, match="random, popularity, itemknn, svd, ease, als, bpr"):
        make_baseline("lightgcn")
    with pytest.raises(ValueError, match="n_neighbors"):
        make_baseline("itemknn", n_neigbors=3)
    with pytest.raises(ValueError, match="l2"):
        make_baseline("ease", l2=-1.0)
    assert make_baseline("ease", seed=4, l2=3.0).l2 == 3.0


# ----------------------------------------------------------------------------------------------------------
# known answers


def test_popularity_most_popular_unseen_in_order():
    # item popularity: c (5) > a (4) > d (3) > b (2) > e (1); negatives (click 0) do not count
    counts = {"a": 4, "b": 2, "c": 5, "d": 3, "e": 1}
    rows = [(f"u{j}", it, T0 + j, 1) for it, n in counts.items() for j in range(n)]
    rows += [(f"u{j}", "e", T0 + j, 0) for j in range(1, 9)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "click"])
    ds, cat = build(df, binary_schema())
    model = make_baseline("popularity").fit(ds.interactions, cat, ds.schema)
    np.testing.assert_array_equal(model.counts, [counts[i] for i in cat.items.ids])
    # engaged: u4 {c}; u3 {a, c}; u1 {a, b, c, d} (u1's click-0 row on e is not an engagement)
    req = cat.requests(np.array(["u4", "u3", "u1"]), np.full(3, T0 + 100), positives(ds.interactions, "click"))
    res = model.rank(req, 3)
    dec = lambda row: [cat.items.decode([i])[0] if i >= 0 else None for i in row]  # noqa: E731
    assert dec(res.items[0]) == ["a", "d", "b"]  # u4 saw c
    assert dec(res.items[1]) == ["d", "b", "e"]
    assert dec(res.items[2]) == ["e", None, None]
    np.testing.assert_array_equal(res.scores[0], [4.0, 3.0, 2.0])


def test_popularity_time_decay_changes_order():
    old = [(f"o{j}", "old_hit", T0, 1) for j in range(5)]
    new = [(f"n{j}", "new_hit", T0 + 100 * DAY, 1) for j in range(3)]
    df = pd.DataFrame(old + new, columns=["user_id", "item_id", "timestamp", "click"])
    ds, cat = build(df, binary_schema())
    req = Requests(np.array([cat.users.oov]), np.array([T0 + 101 * DAY]), Ragged.empty(1))
    plain = make_baseline("popularity").fit(ds.interactions, cat, ds.schema)
    decayed = make_baseline("popularity", half_life_days=10.0).fit(ds.interactions, cat, ds.schema)
    assert list(cat.items.decode(plain.rank(req, 2).items[0])) == ["old_hit", "new_hit"]
    assert list(cat.items.decode(decayed.rank(req, 2).items[0])) == ["new_hit", "old_hit"]
    # weights: 3 recent at full weight, 5 old ones at 0.5 ** 10
    i_old, i_new = cat.items.encode(["old_hit", "new_hit"])
    assert decayed.counts[i_new] == pytest.approx(3.0)
    assert decayed.counts[i_old] == pytest.approx(5 * 0.5**10)


@pytest.fixture(scope="module")
def blocks():
    """Two user groups of 12, each consuming one block of 6 items except a held-out one (item j % 6 of the
    block for user j); plus item 12, engaged by a third of all users, as a popular distractor."""
    rows, held = [], {}
    for g in range(2):
        for j in range(12):
            u = f"g{g}u{j}"
            block = [6 * g + i for i in range(6)]
            held[u] = block[j % 6]
            items = [i for i in block if i != held[u]] + ([12] if j % 3 == 0 else [])
            rows += [(u, i, T0 + k, 1) for k, i in enumerate(items)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "click"])
    ds, cat = build(df, binary_schema(), items=list(range(13)))
    users = np.array(list(held), dtype=object)
    req = cat.requests(users, np.full(len(users), T0 + DAY), positives(ds.interactions, "click"))
    return ds, cat, req, cat.items.encode(np.array([held[u] for u in users]))


@pytest.mark.parametrize("name, params", [("itemknn", {"n_neighbors": 100}), ("ease", {"l2": 1.0}),
                                          ("als", {"factors": 4, "regularization": 0.1, "iterations": 20})])
def test_planted_blocks_precision_at_1(name, params, blocks):
    ds, cat, req, held = blocks
    model = make_baseline(name, **params).fit(ds.interactions, cat, ds.schema)
    top1 = model.rank(req, 1).items[:, 0]
    assert np.mean(top1 == held) == 1.0


def test_itemknn_similarity_matches_dense_reference():
    rng = np.random.default_rng(1)
    x = (rng.random((30, 12)) < 0.3).astype(np.float64)
    n_nb = 4
    sim = cosine_topn(sp.csr_matrix(x), n_nb, block=5).toarray()
    norms = np.sqrt(x.sum(0))
    ref = (x.T @ x) / np.maximum(np.outer(norms, norms), 1e-300)
    np.fill_diagonal(ref, 0.0)
    for h in range(12):  # slow reference: per row, keep the n_nb largest (ties: lower index)
        order = sorted(range(12), key=lambda i: (-ref[h, i], i))
        keep = [i for i in order[:n_nb] if ref[h, i] > 0]
        expect = np.zeros(12)
        expect[keep] = ref[h, keep]
        np.testing.assert_allclose(sim[h], expect, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["itemknn", "ease"])
def test_history_models_score_the_request_history(name, world):
    """score(u, i) = sum over the request's (deduplicated) history items h of W[h, i], W = sim or B."""
    ds, cat = world
    model = fitted(name, world)
    w = model.sim.toarray() if name == "itemknn" else model.weights
    hist = [[], [3], [3, 3, 7], [14, 0, 5, 9], [2, 2, 2, 1, 11, 12]]
    req = Requests(np.full(5, cat.users.oov), np.zeros(5), Ragged.from_lists(hist))
    ref = np.stack([w[sorted(set(h))].sum(axis=0) if h else np.zeros(15) for h in hist])
    np.testing.assert_allclose(model.score(req), ref + model.prior, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["itemknn", "ease", "als"])
def test_history_models_fall_back_to_popularity_without_history(name, world):
    """A request with no history scores 0 everywhere but the popularity tie-breaker: most popular first."""
    ds, cat = world
    model = fitted(name, world)
    pop = fitted("popularity", world)
    req = Requests(np.array([cat.users.oov]), np.zeros(1), Ragged.from_lists([[]]))
    np.testing.assert_array_equal(model.rank(req, 5).items, pop.rank(req, 5).items)


def test_ease_weights_match_constrained_least_squares():
    rng = np.random.default_rng(0)
    x = (rng.random((9, 6)) < 0.4).astype(np.float64)
    l2 = 2.5
    b = ease_weights(x, l2)
    np.testing.assert_array_equal(ease_weights(x, l2, block=2), b)  # the blocked in-place mirroring
    # closed form with np.linalg.inv
    p = np.linalg.inv(x.T @ x + l2 * np.eye(6))
    ref = -p / np.diag(p)[None, :]
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(b, ref, rtol=1e-10, atol=1e-12)
    # independent: column j is the ridge regression of X_j on the other columns (diag(B) = 0 constraint)
    for j in range(6):
        others = [i for i in range(6) if i != j]
        xo = x[:, others]
        coef = np.linalg.solve(xo.T @ xo + l2 * np.eye(5), xo.T @ x[:, j])
        np.testing.assert_allclose(b[others, j], coef, rtol=1e-9, atol=1e-12)
        assert b[j, j] == 0.0


def test_ease_max_items_keeps_most_popular(blocks, caplog):
    ds, cat, req, held = blocks
    model = EASEBaseline(l2=1.0, max_items=3).fit(ds.interactions, cat, ds.schema)
    assert "max_items" in caplog.text
    # every block item has 10 users, item 12 has 8: the three kept are the lowest-index block items
    expect = cat.items.encode([0, 1, 2])
    np.testing.assert_array_equal(model.items, expect)
    s = model.score(req)
    rest = np.setdiff1d(np.arange(13), expect)
    assert np.isneginf(s[:, rest]).all() and np.isfinite(s[:, expect]).all()
    res = model.rank(req, 5)
    assert np.isin(res.items[res.items >= 0], expect).all()


# ----------------------------------------------------------------------------------------------------------
# SVD


@pytest.fixture(scope="module")
def ratings_world():
    rng = np.random.default_rng(3)
    rows = []
    for u in range(25):
        for i in rng.choice(18, size=6, replace=False):
            r = float(rng.integers(1, 11)) / 2
            rows.append((u, int(i), T0 + int(rng.integers(0, 1000)), r, int(r >= 3.5)))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating", "click"])
    return build(df, rating_schema(), items=list(range(20)))  # items 18, 19 have no rows


def test_svd_vectorized_scores_equal_surprise_predict(ratings_world):
    ds, cat = ratings_world
    model = SVDBaseline(seed=5, n_factors=6, n_epochs=15, lr_all=0.02).fit(ds.interactions, cat, ds.schema)
    assert "rating" in model.rating_source
    assert model.algo.trainset.rating_scale == (0.5, 5.0)
    users = np.array([0, 3, 7, 24, cat.users.oov])
    req = Requests(users, np.full(len(users), T0), Ragged.empty(len(users)))
    scores = model.score(req)
    rng = np.random.default_rng(0)
    pairs = [(b, int(i)) for b in range(len(users)) for i in rng.choice(20, 5, replace=False)]
    pairs += [(0, 18), (4, 19), (4, 2)]  # unknown item, unknown user x unknown item, unknown user
    for b, i in pairs:
        est = model.algo.predict(int(users[b]), i, clip=False).est
        assert scores[b, i] == pytest.approx(est, rel=1e-12, abs=1e-12), (b, i)
    # cold fallbacks: unknown item -> mu + b_u; unknown user and item -> mu (the training mean rating)
    assert scores[0, 18] == pytest.approx(model.mu + model.bu[0])
    assert scores[4, 19] == pytest.approx(ds.interactions["rating"].mean())


def test_svd_rating_sources():
    rng = np.random.default_rng(2)
    n = 60
    df = pd.DataFrame(
        {
            "user_id": rng.integers(0, 8, n),
            "item_id": rng.integers(0, 10, n),
            "timestamp": T0 + np.arange(n),
            "click": (rng.random(n) < 0.4).astype(int),
        }
    )
    # impressions: every row, 1 clicked vs 0 shown-not-clicked
    ds, cat = build(df, binary_schema(has_impressions=True))
    _, _, _, _, source = SVDBaseline(seed=1)._ratings(ds.interactions, cat, ds.schema)
    assert "sampled" in source  # impressions are opt-in
    m = SVDBaseline(seed=1, n_factors=3, n_epochs=3, use_impressions=True)
    u, i, r, scale, source = m._ratings(ds.interactions, cat, ds.schema)
    assert "impressions" in source and scale == (0.0, 1.0) and len(r) == n
    np.testing.assert_array_equal(r, df["click"].to_numpy())
    # no impressions: positives as 1 + as many sampled never-engaged items as 0
    ds, cat = build(df, binary_schema())
    u, i, r, scale, source = m._ratings(ds.interactions, cat, ds.schema)
    n_pos = int(df["click"].sum())
    assert (r == 1).sum() == n_pos and (r == 0).sum() == n_pos
    engaged = set(zip(u[r == 1].tolist(), i[r == 1].tolist()))
    assert not engaged & set(zip(u[r == 0].tolist(), i[r == 0].tolist()))
    u2, i2, *_ = m._ratings(ds.interactions, cat, ds.schema)  # seeded
    np.testing.assert_array_equal(i2, i)
    m.fit(ds.interactions, cat, ds.schema)
    assert np.isfinite(m.qi).all()


def test_svd_divergence_raises(ratings_world):
    ds, cat = ratings_world
    with np.errstate(all="ignore"):
        with pytest.raises(RuntimeError, match="svd.*non-finite"):
            SVDBaseline(n_factors=4, n_epochs=50, lr_all=50.0, reg_all=0.0).fit(ds.interactions, cat, ds.schema)


def test_als_scores_are_the_least_squares_fold_in_of_the_request_history(world):
    """Slow reference: x = (Y^T Y + lambda I + (alpha - 1) Y_h^T Y_h)^-1 alpha Y_h^T 1 per request (dense numpy,
    float64), score = x Y^T + the popularity tie-breaker; an empty history gives a zero factor."""
    ds, cat = world
    model = make_baseline("als", factors=4, regularization=0.1, alpha=5.0, iterations=30).fit(
        ds.interactions, cat, ds.schema)
    y = model.model.item_factors.astype(np.float64)
    hist = [[], [3], [3, 3, 7], [14, 0, 5, 9], [2, 2, 2, 1, 11, 12]]
    req = Requests(np.full(5, cat.users.oov), np.zeros(5), Ragged.from_lists(hist))
    ref = np.zeros((5, 4))
    for r, h in enumerate(hist):
        if h:
            yh = y[sorted(set(h))]
            a = y.T @ y + 0.1 * np.eye(4) + (5.0 - 1.0) * yh.T @ yh
            ref[r] = np.linalg.solve(a, 5.0 * yh.sum(axis=0))
    np.testing.assert_allclose(model.user_factors(req), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.score(req), ref @ y.T + model.prior, rtol=1e-4, atol=1e-5)


def test_bpr_scores_are_the_user_factor_times_the_item_factors(world, blocks):
    """Slow reference: score(u, i) = x_u . y_i (implicit's factors, the last column the item bias) + the
    popularity tie-breaker; a user without training positives or outside the catalogue gets (0, ..., 0, 1),
    the items' biases; and on planted blocks BPR puts a user's held-out block item first."""
    ds, cat = world
    model = make_baseline("bpr", factors=4, iterations=30).fit(ds.interactions, cat, ds.schema)
    xu = model.model.user_factors.astype(np.float64)
    yi = model.model.item_factors.astype(np.float64)
    users = np.array([0, 3, 7, cat.users.oov])
    req = Requests(users, np.zeros(4), Ragged.from_lists([[], [1], [2, 3], [0]]))
    ref = np.stack([yi @ xu[u] if u != cat.users.oov else yi[:, -1] for u in users])
    np.testing.assert_allclose(model.score(req), ref + model.prior, rtol=1e-12, atol=1e-12)
    assert (xu[:, -1] == 1).all()
    ds_b, cat_b, req_b, held = blocks
    bpr = make_baseline("bpr", factors=8, learning_rate=0.05, iterations=200).fit(ds_b.interactions, cat_b,
                                                                                 ds_b.schema)
    assert np.mean(bpr.rank(req_b, 1).items[:, 0] == held) >= 0.9
