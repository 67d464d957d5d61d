"""Tests of the embedded synthetic world (recsys.data.synthetic): determinism, realism targets, ground truth."""

from __future__ import annotations

import dataclasses
import json
import math

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from recsys.data import synthetic as syn
from recsys.data.schema import Role, read_dataset
from recsys.data.synthetic import PRESETS, Oracle, WorldConfig, generate_world, synthesize

TINY = dataclasses.replace(PRESETS["tiny"], series_size=6.0)  # with the (optional) series and follows


def _logit(p):
    return np.log(p) - np.log1p(-p)


@pytest.fixture(scope="module")
def world():
    return generate_world(TINY, seed=0)


@pytest.fixture(scope="module")
def saved(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "tiny"
    world.save(out)
    return out


# ---------------------------------------------------------------------------------------------------------
# Determinism and configuration
# ---------------------------------------------------------------------------------------------------------


def test_same_seed_identical_different_seed_differs(world):
    again = generate_world(TINY, seed=0)
    for name in ("interactions", "users", "items", "item_links"):
        pd.testing.assert_frame_equal(getattr(world, name), getattr(again, name))
    for k, v in world.truth.items():
        np.testing.assert_array_equal(v, again.truth[k])
    assert world.params == again.params
    other = generate_world(TINY, seed=1)
    assert not np.array_equal(world.truth["item_quality"], other.truth["item_quality"])
    a, b = world.interactions, other.interactions
    n = min(len(a), len(b))
    assert (a["item_id"].to_numpy()[:n] != b["item_id"].to_numpy()[:n]).mean() > 0.5


def test_chunk_size_changes_only_the_random_stream_not_the_shape():
    # a different block size must still give a valid, equally sized log with the calibrated CTR
    w = generate_world(dataclasses.replace(TINY, chunk_sessions=97), seed=0)
    assert len(w.interactions) == TINY.n_sessions * TINY.slate_size
    assert 0.02 <= w.interactions["click"].mean() <= 0.08


def test_config_validation_and_synthesize_errors(tmp_path):
    with pytest.raises(ValueError, match="slate_size"):
        WorldConfig(slate_size=0)
    with pytest.raises(ValueError, match="candidates_popular"):
        WorldConfig(candidates_popular=1, candidates_category=1, candidates_random=1, slate_size=10)
    with pytest.raises(TypeError, match="n_users"):
        WorldConfig(n_users=1.5)
    with pytest.raises(ValueError, match="unknown preset 'huge'.*tiny"):
        synthesize("huge", 0, tmp_path / "x")
    with pytest.raises(ValueError, match="n_userz"):
        synthesize("tiny", 0, tmp_path / "x", n_userz=3)
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError):
        synthesize("tiny", 0, tmp_path / "exists")


def test_synthesize_with_overrides(tmp_path):
    ds = synthesize("tiny", 3, tmp_path / "small", n_users=50, n_items=80, n_impressions=2_000)
    assert len(ds.users) == 50 and len(ds.items) == 80
    assert len(ds.interactions) == 2_000
    assert (tmp_path / "small" / "truth" / "world.json").is_file()
    again = synthesize("tiny", 3, tmp_path / "small", overwrite=True, n_users=50, n_items=80, n_impressions=2_000)
    pd.testing.assert_frame_equal(again.interactions, ds.interactions)


# ---------------------------------------------------------------------------------------------------------
# Realism targets
# ---------------------------------------------------------------------------------------------------------


def _gini(x):
    x = np.sort(np.asarray(x, np.float64))
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


def test_popularity_and_activity_are_heavy_tailed(world):
    df = world.interactions
    n_items = len(world.items)
    imp = np.sort(np.bincount(df["item_id"] - syn.ITEM_ID_OFFSET, minlength=n_items))[::-1]
    assert imp[: n_items // 10].sum() / imp.sum() > 0.4
    clicks = np.bincount(df["item_id"] - syn.ITEM_ID_OFFSET, weights=df["click"], minlength=n_items)
    assert _gini(clicks) > 0.5
    assert _gini(np.ones(10)) == pytest.approx(0.0)  # the Gini helper itself
    sessions = df.groupby("user_id")["session_id"].nunique().to_numpy()
    s = np.sort(sessions)[::-1]
    assert s[: len(s) // 10].sum() / s.sum() > 0.25  # top 10% of users have > 25% of the sessions


def test_ctr_and_like_rates(world):
    df = world.interactions
    ctr = df["click"].mean()
    assert 0.02 <= ctr <= 0.08
    assert ((df["like"] == 1) <= (df["click"] == 1)).all()  # like only after a click
    like_given_click = df.loc[df["click"] == 1, "like"].mean()
    assert 0.1 < like_given_click < 0.6
    # the truth columns are consistent with the labels (calibrated on average)
    assert df["p_click"].mean() == pytest.approx(ctr, rel=0.2)
    assert df["p_like"].mean() == pytest.approx(df["like"].mean(), rel=0.35)
    assert (df["p_like"] <= df["p_click"]).all()


def test_position_and_context_effects(world):
    df = world.interactions
    assert set(df["position"].unique()) == set(range(TINY.slate_size))
    by_pos = df.groupby("position")["p_click"].mean().to_numpy()
    assert by_pos[0] > by_pos[4] > by_pos[9]
    o = world.oracle()
    u, i, t = df["user_id"].to_numpy()[:500], df["item_id"].to_numpy()[:500], df["timestamp"].to_numpy()[:500]
    desk = o.p_click(u, i, t, device="desktop")
    assert (o.p_click(u, i, t, device="mobile") < desk).all()
    assert (o.p_click(u, i, t, hour=20) > o.p_click(u, i, t, hour=8)).all()
    assert (o.p_click(u, i, t, position=3) < o.p_click(u, i, t)).all()
    np.testing.assert_allclose(o.p_click(u, i, t), o.p_click(u, i, t, position=0, device=0))  # desktop: neutral


def test_pagerank_is_informative_of_quality_but_not_identical(world):
    g = nx.DiGraph()
    g.add_nodes_from(world.items["item_id"])
    g.add_edges_from(zip(world.item_links["src"], world.item_links["dst"]))
    pr = nx.pagerank(g)
    pr_vec = np.array([pr[i] for i in world.items["item_id"]])
    rho = spearmanr(pr_vec, world.truth["item_quality"]).statistic
    assert 0.2 < rho < 0.95


def test_link_graph_structure(world):
    links, items = world.item_links, world.items.set_index("item_id")
    assert (links["src"] != links["dst"]).all()
    assert not links.duplicated().any()
    # every link points to an item that existed when the source item was created
    assert (items.loc[links["dst"], "created_at"].to_numpy() <= items.loc[links["src"], "created_at"].to_numpy()).all()
    same = (items.loc[links["src"], "category"].to_numpy() == items.loc[links["dst"], "category"].to_numpy()).mean()
    p = items["category"].value_counts(normalize=True).to_numpy()
    assert same > 2 * (p**2).sum()  # far more same-category links than random pairs would give
    assert links.groupby("src").size().max() <= TINY.links_per_item + TINY.series_links


def test_series_sequel_links_and_follows(world):
    t, o = world.truth, world.oracle()
    series, cat = t["item_series"].astype(np.int64), t["item_category"]
    # a series lies within one category
    assert (pd.Series(cat).groupby(series).nunique() == 1).all()
    # each item links to (up to) the previous series_links items of its series
    idx = o.item_index(world.item_links["src"].to_numpy()), o.item_index(world.item_links["dst"].to_numpy())
    links = set(zip(*idx))
    for s in np.unique(series)[:10]:
        members = np.flatnonzero(series == s)  # creation order
        for j in range(1, len(members)):
            for lag in range(1, min(TINY.series_links, j) + 1):
                assert (members[j], members[j - lag]) in links
    # follows: CSR, sorted and unique per user; a followed series lies in a category the user has taste for
    indptr, fan = t["user_fan_indptr"], t["user_fan_series"]
    assert indptr[0] == 0 and indptr[-1] == len(fan) and (np.diff(indptr) >= 0).all()
    for u in range(len(indptr) - 1):
        row = fan[indptr[u]:indptr[u + 1]]
        assert (np.diff(row) > 0).all()
    assert 0.5 * TINY.fan_series < np.diff(indptr).mean() <= TINY.fan_series
    # the fan effect: impressions of a followed series are clicked far more often (the policy also shows them)
    df = world.interactions
    f = o.follows(o.user_index(df["user_id"].to_numpy()), o.item_index(df["item_id"].to_numpy()))
    assert 0.05 < f.mean() < 0.5
    assert df["click"][f].mean() > 2 * df["click"][~f].mean()
    assert world.params["stats"]["followed_impression_share"] == pytest.approx(f.mean())


def test_series_can_be_disabled():
    w = generate_world(dataclasses.replace(TINY, series_size=0.0), seed=0)
    assert len(w.truth["user_fan_series"]) == 0 and w.params["stats"]["followed_impression_share"] == 0
    assert w.item_links.groupby("src").size().max() <= TINY.links_per_item
    assert w.interactions["click"].mean() == pytest.approx(TINY.target_ctr, rel=0.2)


def test_click_and_like_are_driven_by_different_factors(world):
    df = world.interactions
    pc = df["p_click"].to_numpy(np.float64)
    plc = df["p_like"].to_numpy(np.float64) / pc
    assert np.corrcoef(pc, plc)[0, 1] < 0.7
    o = world.oracle()
    q = world.truth["item_quality"][o.item_index(df["item_id"].to_numpy())]
    aff = o._affinity(o.user_index(df["user_id"].to_numpy()), o.item_index(df["item_id"].to_numpy()),
                      df["timestamp"].to_numpy())
    # quality matters more for like; affinity matters more for click
    assert np.corrcoef(q, _logit(plc))[0, 1] > np.corrcoef(q, _logit(pc))[0, 1] + 0.05
    assert np.corrcoef(aff, _logit(pc))[0, 1] > np.corrcoef(aff, _logit(plc))[0, 1] + 0.3


def test_items_never_shown_before_creation_and_new_items_arrive(world):
    df = world.interactions.merge(world.items[["item_id", "created_at"]], on="item_id")
    assert (df["timestamp"] >= df["created_at"]).all()
    start, end = syn.START_TS, syn.START_TS + TINY.days * syn.DAY
    assert df["timestamp"].between(start, end - 1).all()
    new = world.items.loc[world.items["created_at"] >= start, "item_id"]
    assert len(new) > 0.3 * len(world.items)
    assert df["item_id"].isin(new).sum() > 0  # new items do get shown


def test_each_session_is_one_slate(world):
    df = world.interactions
    g = df.groupby("session_id")
    assert (g["user_id"].nunique() == 1).all() and (g["timestamp"].nunique() == 1).all()
    assert (g["item_id"].nunique() == g.size()).all()  # no item twice in a slate
    assert (g["position"].max() + 1 == g.size()).all()


# ---------------------------------------------------------------------------------------------------------
# Ground truth and the oracle
# ---------------------------------------------------------------------------------------------------------


def test_logged_truth_equals_oracle(saved):
    ds = read_dataset(saved)
    o = Oracle.load(ds.truth_dir)
    df = ds.interactions
    args = (df["user_id"].to_numpy(), df["item_id"].to_numpy(), df["timestamp"].to_numpy())
    pc = o.p_click(*args, position=df["position"].to_numpy(), hour=df["hour"].to_numpy(),
                   device=df["device"].to_numpy())
    np.testing.assert_allclose(df["p_click"].to_numpy(), pc, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(df["p_like"].to_numpy(), pc * o.p_like_given_click(*args), rtol=1e-6, atol=1e-9)


def _reference_p(params, arrays, uid, iid, ts, pos, hour, device):
    """Slow, per-pair reference of the documented formulas (world.json + truth arrays)."""
    u = int(np.flatnonzero(arrays["user_ids"] == uid)[0])
    i = int(np.flatnonzero(arrays["item_ids"] == iid)[0])
    frac = (ts - params["start_ts"]) / params["span_seconds"]
    aff = sum(
        (float(arrays["user_vec"][u, d]) + float(arrays["user_drift"][u, d]) * frac) * float(arrays["item_vec"][i, d])
        for d in range(arrays["item_vec"].shape[1])
    )
    q = float(arrays["item_quality"][i])
    indptr = arrays["user_fan_indptr"]
    follows = int(arrays["item_series"][i]) in set(arrays["user_fan_series"][indptr[u]:indptr[u + 1]].tolist())
    zc = (params["click_bias"] + params["click_affinity"] * aff + params["click_quality"] * q
          + params["fan_affinity"] * follows
          - params["position_decay"] * math.log2(1 + pos)
          + params["hour_amplitude"] * math.cos(2 * math.pi * (hour - params["peak_hour"]) / 24)
          + params["device_effects"][device])
    zl = (params["like_bias"] + params["like_quality"] * q
          - params["like_price"] * float(arrays["user_price_sens"][u]) * float(arrays["item_price_z"][i])
          + arrays["like_age_category"][arrays["user_age"][u], arrays["item_category"][i]]
          + params["like_affinity"] * aff)
    return 1 / (1 + math.exp(-zc)), 1 / (1 + math.exp(-zl))


def test_oracle_matches_slow_reference(saved):
    truth = saved / "truth"
    params = json.loads((truth / "world.json").read_text())
    arrays = {k: np.load(truth / f"{k}.npy", allow_pickle=False) for k in syn.TRUTH_ARRAYS}
    df = read_dataset(saved).interactions.sample(40, random_state=0)
    o = Oracle.load(truth)
    followed = o.follows(o.user_index(df["user_id"].to_numpy()), o.item_index(df["item_id"].to_numpy()))
    assert 0 < followed.sum() < len(df)  # both branches of the fan term are checked
    for r in df.itertuples():
        ref_c, ref_l = _reference_p(params, arrays, r.user_id, r.item_id, r.timestamp, r.position, r.hour, r.device)
        got_c = o.p_click([r.user_id], [r.item_id], [r.timestamp], [r.position], [r.hour], [r.device])[0]
        got_l = o.p_like_given_click([r.user_id], [r.item_id], [r.timestamp])[0]
        assert got_c == pytest.approx(ref_c, rel=1e-9)
        assert got_l == pytest.approx(ref_l, rel=1e-9)
        assert r.p_click == pytest.approx(ref_c, rel=1e-6)


def test_truth_format_1_loads_as_a_world_without_series(tmp_path):
    # a world saved before series existed (truth format 1): no series arrays, no fan term
    w = generate_world(dataclasses.replace(TINY, series_size=0.0), seed=0)
    w.save_truth(tmp_path / "truth")
    for name in syn.SERIES_ARRAYS:
        (tmp_path / "truth" / f"{name}.npy").unlink()
    wj = tmp_path / "truth" / "world.json"
    params = json.loads(wj.read_text())
    del params["fan_affinity"]
    wj.write_text(json.dumps({**params, "truth_format": 1}))
    old, new = Oracle.load(tmp_path / "truth"), w.oracle()
    users, ts = w.truth["user_ids"][:5], np.full(5, syn.START_TS + 30 * syn.DAY)
    np.testing.assert_array_equal(old.scores(users, ts), new.scores(users, ts))
    wj.write_text(json.dumps({**params, "truth_format": 7}))
    with pytest.raises(ValueError, match="truth_format 7 is not one of 1, 2"):
        Oracle.load(tmp_path / "truth")


def test_oracle_scores_matrix(world):
    o = world.oracle()
    df = world.interactions
    users = df["user_id"].to_numpy()[:: len(df) // 7][:7]
    ts = np.array([syn.START_TS - 10, syn.START_TS, syn.START_TS + 10 * syn.DAY, syn.START_TS + 30 * syn.DAY,
                   syn.START_TS + 45 * syn.DAY, syn.START_TS + 59 * syn.DAY, syn.START_TS + 59 * syn.DAY])
    s = o.scores(users, ts, max_cells=3 * len(o.item_ids))  # forces several row blocks
    assert s.shape == (7, len(o.item_ids)) and s.dtype == np.float64
    created = world.items["created_at"].to_numpy()
    np.testing.assert_array_equal(np.isneginf(s), created[None, :] > ts[:, None])
    assert np.isfinite(s[-1]).sum() > np.isfinite(s[0]).sum()  # new items appear over time
    # the (B, N) matrix agrees with the pairwise EV (an independent code path: matmul vs pair sums)
    for b in range(7):
        ok = np.isfinite(s[b])
        ev = o.expected_value(np.full(ok.sum(), users[b]), o.item_ids[ok], ts[b])
        np.testing.assert_allclose(s[b, ok], ev, rtol=1e-10)
        assert ((s[b, ok] > 0) & (s[b, ok] < 2)).all()
    # the taste drifts: the same user's scores change over the span
    s2 = o.scores(users[:1].repeat(2), np.array([syn.START_TS + syn.DAY, syn.START_TS + 59 * syn.DAY]))
    both = np.isfinite(s2).all(axis=0)
    assert np.abs(s2[0, both] - s2[1, both]).max() > 1e-3


def test_oracle_ranks_clicked_impressions_higher(world):
    o = world.oracle()
    df = world.interactions
    ev = o.expected_value(df["user_id"].to_numpy(), df["item_id"].to_numpy(), df["timestamp"].to_numpy())
    clicked = df["click"].to_numpy() == 1
    assert ev[clicked].mean() > 1.5 * ev[~clicked].mean()
    liked = df["like"].to_numpy() == 1
    assert ev[liked].mean() > ev[clicked & ~liked].mean()


def test_oracle_input_errors(world):
    o = world.oracle()
    with pytest.raises(ValueError, match=r"unknown user id\(s\) \[999999\]"):
        o.scores(np.array([1, 999999]), np.array([syn.START_TS, syn.START_TS]))
    with pytest.raises(ValueError, match=r"unknown item id\(s\) \[5\]"):
        o.p_click(np.array([1]), np.array([5]), np.array([syn.START_TS]))
    with pytest.raises(ValueError, match="unknown device"):
        o.p_click(np.array([1]), o.item_ids[:1], np.array([syn.START_TS]), device=np.array(["fridge"]))
    with pytest.raises(ValueError, match=r"timestamps must be a scalar or have shape \(2,\)"):
        o.p_click(np.array([1, 2]), o.item_ids[:2], np.array([syn.START_TS] * 3))
    with pytest.raises(ValueError, match="hour must be a scalar"):
        o.p_click(np.array([1, 2]), o.item_ids[:2], syn.START_TS, hour=np.array([1, 2, 3]))
    future = o.item_ids[-1:]
    t = int(world.items["created_at"].iloc[-1]) - 1
    assert o.p_click(np.array([1]), future, np.array([t]))[0] == 0.0
    assert np.isneginf(o.expected_value(np.array([1]), future, np.array([t]))[0])


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------


def test_dataset_round_trip(world, saved):
    ds = read_dataset(saved)
    mem = world.to_dataset()
    assert ds.schema == mem.schema
    for name in ("interactions", "users", "items", "item_links"):
        pd.testing.assert_frame_equal(getattr(ds, name), getattr(mem, name), check_categorical=True)
    sch = ds.schema
    assert sch.positive_label == "click" and sch.has_impressions
    assert sch.labels == ["click", "like"]
    assert sch.context_columns == ["hour", "device"]
    inter = sch.tables["interactions"]
    assert inter.names(Role.TRUTH) == ["p_click", "p_like"] and inter.names(Role.POSITION) == ["position"]
    assert ds.interactions["user_id"].dtype == np.int64 and ds.interactions["item_id"].dtype == np.int64
    assert not set(ds.interactions["user_id"]) & set(ds.items["item_id"])  # user and item ids differ
    assert ds.interactions["timestamp"].is_monotonic_increasing
    assert set(ds.items.columns) == {"item_id", "category", "created_at", "price"}
    assert set(ds.users.columns) == {"user_id", "age_bucket", "country", "device"}
    # truth folder: arrays readable without pickle, parameters as JSON
    assert ds.truth_dir == saved / "truth"
    for name, (dtype, _) in syn.TRUTH_ARRAYS.items():
        arr = np.load(ds.truth_dir / f"{name}.npy", allow_pickle=False)
        assert arr.dtype == np.dtype(dtype), name
        np.testing.assert_array_equal(arr, world.truth[name])
    params = json.loads((ds.truth_dir / "world.json").read_text())
    assert params["seed"] == 0 and params["config"]["n_items"] == TINY.n_items
    assert not list(saved.parent.glob(".tiny.*"))  # no temporary folders left behind


def test_sample_prefix_matches_weights():
    rng = np.random.default_rng(0)
    w = rng.random(12) + 0.1
    cum = np.cumsum(w)
    lo, hi = 3, 9
    pos = syn._sample_prefix(cum, np.full(200_000, lo), np.full(200_000, hi), rng.random(200_000))
    freq = np.bincount(pos, minlength=12) / len(pos)
    expected = np.zeros(12)
    expected[lo:hi] = w[lo:hi] / w[lo:hi].sum()
    np.testing.assert_allclose(freq, expected, atol=0.005)
    empty = syn._sample_prefix(cum, np.array([4]), np.array([4]), np.array([0.5]))
    assert empty.tolist() == [-1]
    # the sorted-query searchsorted equals numpy's
    v = rng.random(10_000) * cum[-1]
    np.testing.assert_array_equal(syn._searchsorted(cum, v, "right"), np.searchsorted(cum, v, "right"))
