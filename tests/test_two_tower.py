"""Two-tower model, sampled-softmax loss (logQ, accidental hits, mixed negatives), training, and the
RetrievalStage end to end on a tiny planted world."""

from __future__ import annotations

import dataclasses

import math

import numpy as np
import pandas as pd
import pytest
from fitting import fit_context
import torch
import torch.nn.functional as F

from recsys.collab import CollabConfig
from recsys.configlib import ConfigError
from recsys.data.catalog import Catalog
from recsys.data.schema import Dataset, col, make_schema
from recsys.retrieval.stage import RetrievalConfig, RetrievalStage
from recsys.retrieval.train import TrainExamples, TwoTowerConfig, UserInputs, ValidSet, evaluate_recall, pad_history, \
    train_two_tower
from recsys.retrieval.two_tower import ItemTower, TowerSpec, TwoTower, UserTower, item_log_q, sampled_softmax_loss
from recsys.types import Ragged, Requests

torch.set_num_threads(1)


def _normed(rng, *shape):
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    return F.normalize(x, dim=-1)


# ------------------------------------------------------------------------------------------------------------
# Loss
# ------------------------------------------------------------------------------------------------------------


def slow_loss(u, v, items, log_q, tau, neg_v=None, neg_idx=None, neg_log_q=None):
    """Reference: per row, the softmax over columns that are not another copy of the row's positive."""
    total = 0.0
    b = len(u)
    for i in range(b):
        logits = []
        for j in range(b):
            if j != i and items[j] == items[i]:
                continue
            lq = 0.0 if log_q is None else float(log_q[j])
            logits.append((float(u[i] @ v[j]) / tau - lq, j == i))
        if neg_v is not None:
            for m in range(len(neg_v)):
                if neg_idx[m] == items[i]:
                    continue
                lq = 0.0 if neg_log_q is None else float(neg_log_q[m])
                logits.append((float(u[i] @ neg_v[m]) / tau - lq, False))
        vals = np.array([x for x, _ in logits], dtype=np.float64)
        target = [x for x, t in logits if t][0]
        total += math.log(np.exp(vals - vals.max()).sum()) + vals.max() - target
    return total / b


def test_logq_sign_lowers_popular_columns():
    # identical vectors, so raw logits are all equal: without correction every row's loss is log 3. With it,
    # column j's logit is -log q_j: the popular column (q = 0.7) is lowered the least below... i.e. it gets
    # the lowest logit, so the row whose positive is popular pays more, the rare rows less.
    u = torch.ones((3, 2)) / math.sqrt(2)
    items = torch.tensor([0, 1, 2])
    q = np.array([0.7, 0.2, 0.1])
    log_q = torch.log(torch.tensor(q, dtype=torch.float32))
    assert float(sampled_softmax_loss(u, u.clone(), items, None, 1.0)) == pytest.approx(math.log(3), abs=1e-6)
    got = float(sampled_softmax_loss(u, u.clone(), items, log_q, 1.0))
    lse = math.log(np.sum(1.0 / q))  # logsumexp_j(-log q_j)
    per_row = lse + np.log(q)  # CE of row i = lse - (-log q_i)
    assert got == pytest.approx(per_row.mean(), abs=1e-6)
    wrong_sign = math.log(np.sum(q)) - np.log(q).mean()  # what adding log q would give
    assert abs(got - wrong_sign) > 0.04
    assert per_row[0] > math.log(3) > per_row[2]  # popular positive: larger loss; rare: smaller


def test_accidental_hits_masked_matches_slow_reference():
    rng = np.random.default_rng(0)
    b, d = 12, 8
    items = torch.tensor([3, 5, 3, 7, 5, 3, 9, 1, 1, 4, 2, 0])  # duplicates: 3 x3, 5 x2, 1 x2
    u, v = _normed(rng, b, d), _normed(rng, b, d)
    log_q = torch.from_numpy(rng.normal(size=b).astype(np.float32))
    got = float(sampled_softmax_loss(u, v, items, log_q, 0.1))
    ref = slow_loss(u.numpy(), v.numpy(), items.numpy(), log_q.numpy(), 0.1)
    assert got == pytest.approx(ref, rel=1e-5)
    # without masking the result would differ (duplicates act as false negatives)
    logits = (u @ v.T) / 0.1 - log_q[None, :]
    unmasked = float(F.cross_entropy(logits, torch.arange(b)))
    assert abs(unmasked - ref) > 1e-3


def test_mixed_negatives_match_slow_reference():
    rng = np.random.default_rng(1)
    b, m, d = 8, 6, 5
    items = torch.tensor([0, 1, 2, 2, 3, 4, 5, 6])
    neg_idx = torch.tensor([2, 9, 10, 0, 11, 12])  # 2 and 0 are accidental hits for some rows
    u, v, nv = _normed(rng, b, d), _normed(rng, b, d), _normed(rng, m, d)
    lq = torch.from_numpy(rng.normal(size=b).astype(np.float32))
    nlq = torch.from_numpy(rng.normal(size=m).astype(np.float32))
    got = float(sampled_softmax_loss(u, v, items, lq, 0.2, nv, neg_idx, nlq))
    ref = slow_loss(u.numpy(), v.numpy(), items.numpy(), lq.numpy(), 0.2, nv.numpy(), neg_idx.numpy(), nlq.numpy())
    assert got == pytest.approx(ref, rel=1e-5)


def test_logq_recovers_true_softmax_on_skewed_corpus():
    """One context, Zipf item distribution p. In-batch negatives are drawn from p itself, so without the
    correction the optimum is score_i = log p_i - log q_i + c = const: popular items are under-scored. With
    it, score_i = log p_i + c. Fit the slope of learned scores on log p: ~1 with, ~0 without."""
    n, e = 30, 8000
    rng = np.random.default_rng(0)
    p = 1.0 / (np.arange(n) + 1.0) ** 1.1
    p /= p.sum()
    items = rng.choice(n, size=e, p=p)
    ex = TrainExamples.build(np.zeros(e, np.int64), items, np.arange(e), n, 0)
    slopes = {}
    for logq in (True, False):
        torch.manual_seed(0)
        model = TwoTower.from_spec(TowerSpec(n_users=1, n_items=n, dim=16, emb_dim=16, hidden=(), use_history=False,
                                             temperature=0.1))
        cfg = TwoTowerConfig(dim=16, batch_size=128, max_epochs=3, logq=logq, input_dropout=0.0, threads=1, lr=0.01)
        model, _ = train_two_tower(model, ex, None, cfg)
        with torch.no_grad():
            s = (model.user_embeddings(torch.zeros(1, dtype=torch.long)) @ model.item_embeddings().T)[0].numpy()
        s = s / model.temperature
        slopes[logq] = float(np.polyfit(np.log(p), s, 1)[0])
    assert 0.75 < slopes[True] < 1.3, slopes
    assert slopes[False] < 0.4, slopes


def test_item_log_q():
    lq = item_log_q(torch.tensor([3.0, 1.0, 0.0]))
    assert torch.allclose(lq[:2], torch.log(torch.tensor([0.75, 0.25])))
    assert torch.isfinite(lq).all()


# ------------------------------------------------------------------------------------------------------------
# Towers and examples
# ------------------------------------------------------------------------------------------------------------


def test_towers_shapes_normalised_and_history_shared():
    item = ItemTower(10, dim=8, emb_dim=6, hidden=(5,), cat_cards=(3,), n_numeric=1,
                     item_cat=torch.zeros((11, 1), dtype=torch.long), item_num=torch.zeros((11, 1)))
    user = UserTower(5, dim=8, emb_dim=6, hidden=(5,), history_embedding=item.id_embedding, cat_cards=(4,),
                     n_numeric=2)
    model = TwoTower(user, item, 0.1)
    users = torch.tensor([0, 4])
    hist = torch.tensor([[1, 2, 10], [10, 10, 10]])  # 10 = padding
    u = model.user_embeddings(users, hist, torch.tensor([[0], [3]]), torch.zeros((2, 2)))
    v = model.item_embeddings()
    assert u.shape == (2, 8) and v.shape == (10, 8)
    assert torch.allclose(u.norm(dim=1), torch.ones(2)) and torch.allclose(v.norm(dim=1), torch.ones(10))
    assert user.history_embedding is item.id_embedding
    assert torch.all(item.id_embedding.weight[10] == 0)  # padding row


def test_examples_history_strictly_before_and_last_L():
    # user 0: items 1,2,3,4 at times 10,20,20,30; user 1: items 5,6 at 5,6 (given unsorted)
    users = np.array([1, 0, 0, 0, 1, 0])
    items = np.array([6, 3, 1, 4, 5, 2])
    times = np.array([6, 20, 10, 30, 5, 20])
    ex = TrainExamples.build(users, items, times, n_items=9, history_len=2)
    got = {}
    for e in range(len(ex)):
        h = ex.history(np.array([e]))[0]
        got[(int(ex.users[e]), int(ex.items[e]))] = [int(x) for x in h if x != 9]
    assert got[(0, 1)] == []
    assert got[(0, 2)] == [1] and got[(0, 3)] == [1]  # same timestamp 20: not in each other's history
    assert sorted(got[(0, 4)]) == [2, 3]  # last L = 2 of [1, {2, 3}] (2 and 3 tie at t = 20)
    assert got[(1, 5)] == [] and got[(1, 6)] == [5]


def test_pad_history():
    h = Ragged.from_lists([[1, 2, 3], [], [4]])
    assert pad_history(h, 2, 9).tolist() == [[2, 3], [9, 9], [9, 4]]


# ------------------------------------------------------------------------------------------------------------
# Planted world
# ------------------------------------------------------------------------------------------------------------

N_GROUPS, PER_GROUP, USERS_PER_GROUP = 4, 25, 40


def planted(seed=0, n_train=10, n_test=3):
    """Users of group g engage only with items of cluster g (items g*25 .. g*25+24). Global item popularity is
    flat across clusters, so popularity cannot tell groups apart."""
    rng = np.random.default_rng(seed)
    rows = []
    t0 = 1_700_000_000
    for g in range(N_GROUPS):
        for j in range(USERS_PER_GROUP):
            uid = g * USERS_PER_GROUP + j
            chosen = rng.choice(PER_GROUP, size=n_train + n_test, replace=False) + g * PER_GROUP
            for r, item in enumerate(chosen):
                rows.append((uid, int(item), t0 + r * 100 + j, 1))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "click"])
    order = df.groupby("user_id").cumcount()
    return df[order < n_train], df[order >= n_train]


def test_two_tower_recovers_planted_clusters():
    train, test = planted()
    n = N_GROUPS * PER_GROUP
    users, items = train["user_id"].to_numpy(), train["item_id"].to_numpy()
    ex = TrainExamples.build(users, items, train["timestamp"].to_numpy(), n, 5)
    n_users = N_GROUPS * USERS_PER_GROUP
    hist = Ragged.from_lists([items[users == u] for u in range(n_users)])
    rel = Ragged.from_lists([test["item_id"].to_numpy()[test["user_id"].to_numpy() == u] for u in range(n_users)])
    valid = ValidSet(UserInputs(np.arange(n_users), pad_history(hist, 5, n), np.zeros((n_users, 0), np.int64),
                                np.zeros((n_users, 0), np.float32)), rel, hist)
    torch.manual_seed(0)
    model = TwoTower.from_spec(TowerSpec(n_users=n_users + 1, n_items=n, dim=16, emb_dim=16, hidden=(32,)))
    cfg = TwoTowerConfig(dim=16, batch_size=64, max_epochs=30, patience=5, lr=0.01, eval_k=10, threads=1,
                         input_dropout=0.2)
    model, history = train_two_tower(model, ex, valid, cfg)
    recall = evaluate_recall(model, valid, 10)
    # popularity: the 10 most engaged unseen items (flat across clusters -> ~ 10 / 85 of a user's 3 held-out)
    counts = np.bincount(items, minlength=n).astype(float)
    pop_hits = []
    for u in range(n_users):
        c = counts.copy()
        c[hist.row(u)] = -1
        top = np.argsort(-c, kind="stable")[:10]
        pop_hits.append(np.isin(rel.row(u), top).mean())
    assert recall == pytest.approx(max(h["recall@10"] for h in history))
    assert recall > 0.5, recall  # within-cluster chance is 10 / 15 unseen items
    assert recall > 3 * np.mean(pop_hits), (recall, np.mean(pop_hits))


def test_training_deterministic_for_a_seed():
    train, _ = planted(seed=1, n_train=6, n_test=0)
    n = N_GROUPS * PER_GROUP
    ex = TrainExamples.build(train["user_id"].to_numpy(), train["item_id"].to_numpy(), train["timestamp"].to_numpy(),
                             n, 3)
    cfg = TwoTowerConfig(dim=8, emb_dim=8, hidden=(8,), batch_size=32, max_epochs=2, threads=1,
                         n_uniform_negatives=16)
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        model = TwoTower.from_spec(TowerSpec(n_users=161, n_items=n, dim=8, emb_dim=8, hidden=(8,)))
        model, _ = train_two_tower(model, ex, None, cfg)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    torch.manual_seed(3)
    model = TwoTower.from_spec(TowerSpec(n_users=161, n_items=n, dim=8, emb_dim=8, hidden=(8,)))
    model, _ = train_two_tower(model, ex, None, TwoTowerConfig(**{**cfg.__dict__, "seed": 1}))
    assert not all(torch.equal(states[0][k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------------------------
# RetrievalStage end to end
# ------------------------------------------------------------------------------------------------------------


def planted_dataset():
    train, test = planted(seed=2)
    n_users = N_GROUPS * USERS_PER_GROUP
    inter = pd.concat([train, test], ignore_index=True)
    rng = np.random.default_rng(0)
    inter["device"] = rng.choice(["mobile", "desktop"], size=len(inter))
    users = pd.DataFrame({"user_id": np.arange(n_users + 5),
                          "country": [f"c{u // USERS_PER_GROUP % N_GROUPS}" for u in range(n_users + 5)]})
    items = pd.DataFrame({"item_id": np.arange(N_GROUPS * PER_GROUP),
                          "category": [f"k{i // PER_GROUP}" for i in range(N_GROUPS * PER_GROUP)],
                          "price": rng.lognormal(2, 1, N_GROUPS * PER_GROUP)})
    schema = make_schema(
        "planted",
        {"user_id": col("user_id"), "item_id": col("item_id"), "timestamp": col("timestamp"),
         "click": col("label", "binary"), "device": col("context", "categorical")},
        "click",
        users={"user_id": col("user_id"), "country": col("categorical")},
        items={"item_id": col("item_id"), "category": col("categorical"), "price": col("numeric")},
    )
    ds = Dataset(schema, inter.sort_values("timestamp", kind="stable").reset_index(drop=True), users, items)
    return ds, inter.iloc[: len(train)], inter.iloc[len(train):]


@pytest.fixture(scope="module")
def fitted_stage():
    ds, train, test = planted_dataset()
    catalog = Catalog.from_dataset(ds, train)
    cfg = RetrievalConfig(
        two_tower=TwoTowerConfig(dim=16, emb_dim=16, feature_dim=4, hidden=(32,), batch_size=64, max_epochs=25,
                                 patience=5, lr=0.01, eval_k=10, threads=1, input_dropout=0.2, history_len=5),
        index_factory="HNSW16", popularity_share=0.2, index_threads=1, graph_share=0.0,
    )
    stage = RetrievalStage(cfg).fit(fit_context(ds, catalog, train, train.iloc[:0], valid=test))
    return stage, ds, catalog, train, test


def test_graph_source_is_merged_and_saved(fitted_stage, tmp_path):
    """With graph_share > 0 the stage builds the PPR source on the train graph, reserves its slots, and the
    source survives save/load (same candidates)."""
    stage, ds, catalog, train, test = fitted_stage
    cfg = dataclasses.replace(stage.cfg, graph_share=0.25)
    g = RetrievalStage(cfg).fit(fit_context(ds, catalog, train, train.iloc[:0], valid=test))
    req = _requests(catalog, train, np.arange(8))
    c = g.retrieve(req, 20)
    assert c.names == ["ann", "graph", "popularity"]
    # every candidate the graph source also proposed carries its PPR score (items keep the first source
    # in priority order, so on this tiny catalogue most of them are credited to the ANN source)
    assert np.isfinite(c.scores["graph"]).sum(axis=1).min() >= 5
    g.save(tmp_path / "stage")
    again = RetrievalStage.load(tmp_path / "stage", catalog)
    c2 = again.retrieve(req, 20)
    np.testing.assert_array_equal(c.items, c2.items)
    np.testing.assert_array_equal(c.source, c2.source)


def test_collab_source_is_merged_and_saved(fitted_stage, tmp_path):
    """With collab_share > 0 the stage fits the item-item model on the train positives, reserves its slots
    after the graph source, and the source survives save/load (same candidates and scores)."""
    stage, ds, catalog, train, test = fitted_stage
    cfg = dataclasses.replace(stage.cfg, graph_share=0.1, collab_share=0.25)
    g = RetrievalStage(cfg).fit(fit_context(ds, catalog, train, train.iloc[:0], valid=test))
    req = _requests(catalog, train, np.arange(8))
    c = g.retrieve(req, 20)
    assert c.names == ["ann", "graph", "collab", "popularity"]
    assert np.isfinite(c.scores["collab"]).sum(axis=1).min() >= 5
    g.save(tmp_path / "stage")
    again = RetrievalStage.load(tmp_path / "stage", catalog)
    c2 = again.retrieve(req, 20)
    np.testing.assert_array_equal(c.items, c2.items)
    np.testing.assert_array_equal(c.source, c2.source)
    np.testing.assert_array_equal(c.scores["collab"], c2.scores["collab"])
    with pytest.raises(ConfigError, match="retrieval.collab.method: 'none' with retrieval.collab_share > 0"):
        dataclasses.replace(cfg, collab=CollabConfig(method="none"))


def _requests(catalog, train, user_ids, exclude_seen=True):
    return catalog.requests(np.asarray(user_ids), np.full(len(user_ids), 1_800_000_000), train,
                            exclude_seen=exclude_seen, context={"device": np.array(["mobile"] * len(user_ids))})


def test_stage_rank_beats_popularity_and_handles_cold(fitted_stage):
    stage, ds, catalog, train, test = fitted_stage
    users = np.arange(N_GROUPS * USERS_PER_GROUP)
    req = _requests(catalog, train, users)
    res = stage.rank(req, 10)
    assert res.items.shape == (len(users), 10)
    rel = catalog.histories(users, test)
    hits = np.mean([np.isin(rel.row(b), res.items[b]).mean() for b in range(len(users))])
    assert hits > 0.5, hits
    # never returns a seen item, scores non-increasing, stages recorded
    for b in range(len(users)):
        assert not np.isin(res.items[b], req.history.row(b)).any()
    assert np.all(np.diff(res.scores, axis=1) <= 1e-9)
    assert np.array_equal(res.stages["retrieval"], res.items)
    # cold (unknown id, no history) -> popularity only, flagged; OOV with a history -> two-tower
    cold = Requests(users=np.array([catalog.users.oov, catalog.users.oov]), timestamps=np.zeros(2, np.int64),
                    history=Ragged.from_lists([[], list(range(PER_GROUP, PER_GROUP + 5))]),
                    user_ids=np.array([10_000, 10_001]))
    out = stage.rank(cold, 10)
    assert out.degraded == [["cold_start"], []]
    assert np.array_equal(out.items[0], stage.popularity.ranked[:10])
    assert np.all(out.items[1] // PER_GROUP == 1)  # history in cluster 1 -> cluster-1 items


def test_stage_retrieve_quotas_and_k_beyond_catalogue(fitted_stage):
    stage, ds, catalog, train, test = fitted_stage
    req = _requests(catalog, train, np.arange(8))
    c = stage.retrieve(req, 20)
    assert c.items.shape == (8, 20) and c.names == ["ann", "popularity"]
    assert (c.source == 1).sum(axis=1).min() >= 4  # popularity_share 0.2 of 20 slots
    big = stage.retrieve(req, 500)  # > catalogue: every unseen item once, then padding
    for b in range(8):
        row = big.items[b][big.items[b] >= 0]
        assert len(row) == len(np.unique(row)) == catalog.n_items - len(np.unique(req.history.row(b)))


def test_stage_save_load_roundtrip(fitted_stage, tmp_path):
    stage, ds, catalog, train, test = fitted_stage
    stage.save(tmp_path / "retrieval")
    assert not any(p.suffix in (".pkl", ".pickle", ".pt") for p in (tmp_path / "retrieval").iterdir())
    loaded = RetrievalStage.load(tmp_path / "retrieval", catalog)
    req = _requests(catalog, train, np.arange(30))
    a, b = stage.rank(req, 10), loaded.rank(req, 10)
    assert np.array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    ca, cb = stage.retrieve(req, 40), loaded.retrieve(req, 40)
    assert np.array_equal(ca.items, cb.items) and np.array_equal(ca.source, cb.source)
    with pytest.raises(ValueError, match="catalogue"):
        other = Catalog.from_dataset(ds, train.iloc[:50])
        RetrievalStage.load(tmp_path / "retrieval", other)


def test_config_errors_name_the_key():
    from recsys.configlib import ConfigError

    with pytest.raises(ConfigError, match="retrieval.index_factory"):
        RetrievalConfig(index_factory="LSH")
    with pytest.raises(ConfigError, match="retrieval.two_tower.temperature"):
        TwoTowerConfig(temperature=0)


def test_history_attention_is_causal_padding_blind_and_batch_invariant():
    """The attention summary of a history depends only on its items (not on how much padding precedes them, nor
    on the other rows of the batch); an empty history gives 0; the most recent item matters most."""
    from recsys.retrieval.two_tower import HistoryAttention

    torch.manual_seed(0)
    att = HistoryAttention(emb_dim=8, length=6, layers=2, heads=2).eval()
    emb = torch.nn.Embedding(11, 8, padding_idx=10)
    pad = 10
    rows = torch.tensor([[pad, pad, pad, 1, 2, 3], [pad] * 6, [4, 5, 6, 7, 8, 9], [pad, pad, pad, pad, 2, 3]])
    with torch.no_grad():
        out = att(emb(rows), rows != pad)
        assert torch.equal(out[1], torch.zeros(8))
        for b in range(len(rows)):  # alone = in the batch
            assert torch.equal(att(emb(rows[b:b + 1]), rows[b:b + 1] != pad)[0], out[b])
        short = torch.tensor([[pad, 1, 2, 3]])  # the same history with less padding (positions count from the end)
        torch.testing.assert_close(att(emb(short), short != pad)[0], out[0], rtol=1e-5, atol=1e-6)
        changed_first = torch.tensor([[pad, pad, pad, 4, 2, 3]])
        changed_last = torch.tensor([[pad, pad, pad, 1, 2, 4]])
        d_first = (att(emb(changed_first), changed_first != pad)[0] - out[0]).norm()
        d_last = (att(emb(changed_last), changed_last != pad)[0] - out[0]).norm()
        assert d_first > 0 and d_last > 0
    with pytest.raises(ValueError, match="not divisible"):
        HistoryAttention(emb_dim=8, length=4, heads=3)
    with pytest.raises(ConfigError, match=r"retrieval\.two_tower\.history_encoder: must be 'mean' or 'attention'"):
        TwoTowerConfig(history_encoder="gru")


def test_attention_user_tower_trains_saves_and_loads(fitted_stage, tmp_path):
    """The SASRec-like user tower goes through the stage: it learns the planted clusters as the mean-pooled
    one does, and a saved stage gives the same user vectors."""
    stage, ds, catalog, train, test = fitted_stage
    cfg = dataclasses.replace(stage.cfg, two_tower=dataclasses.replace(stage.cfg.two_tower, history_encoder="attention"))
    att = RetrievalStage(cfg).fit(fit_context(ds, catalog, train, train.iloc[:0], valid=test))
    assert att.model.user_tower.attention is not None and stage.model.user_tower.attention is None
    users = np.arange(N_GROUPS * USERS_PER_GROUP)
    req = _requests(catalog, train, users)
    res = att.rank(req, 10)
    rel = catalog.histories(users, test)
    hits = np.mean([np.isin(rel.row(b), res.items[b]).mean() for b in range(len(users))])
    assert hits > 0.5, hits
    att.save(tmp_path / "att")
    again = RetrievalStage.load(tmp_path / "att", catalog)
    np.testing.assert_array_equal(again.user_vectors(req), att.user_vectors(req))
