"""The item-item model (recsys.collab), its candidate source and its feature, against slow dense references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.collab import CollabConfig, ItemItem, cosine_topn, ease_weights, positive_matrix, prune_rows
from recsys.configlib import ConfigError
from recsys.retrieval.sources import CollabSource
from recsys.types import Ragged, Requests


def _log(seed: int = 0, n_users: int = 60, n_items: int = 30, per_user: int = 8):
    """Users in 3 taste groups over 3 item blocks, plus noise; returns (user ids, item indices)."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        block = np.arange(u % 3, n_items, 3)
        picks = np.r_[rng.choice(block, per_user - 2, replace=False), rng.integers(0, n_items, 2)]
        users += [f"u{u}"] * len(picks)
        items += picks.tolist()
    return np.array(users), np.array(items, dtype=np.int64)


def _requests(histories, exclude=None) -> Requests:
    b = len(histories)
    return Requests(users=np.arange(b), timestamps=np.zeros(b, np.int64), history=Ragged.from_lists(histories),
                    exclude=None if exclude is None else Ragged.from_lists(exclude))


def _dense_scores(w: np.ndarray, histories) -> np.ndarray:
    out = np.zeros((len(histories), w.shape[0]))
    for b, h in enumerate(histories):
        for i in sorted(set(h)):
            out[b] += w[i]
    return out


def test_prune_rows_keeps_the_largest_magnitudes_like_a_loop():
    rng = np.random.default_rng(1)
    w = np.round(rng.normal(size=(40, 40)), 1)  # rounded: many ties, broken by the lower column
    w[rng.random(w.shape) < 0.3] = 0.0
    for k in (1, 5, 17, 40, 60):
        got = prune_rows(w, k, block=7).toarray()
        want = np.zeros_like(w)
        for r in range(len(w)):
            cols = [c for c in sorted(range(len(w)), key=lambda c: (-abs(w[r, c]), c)) if w[r, c] != 0][:k]
            want[r, cols] = w[r, cols]
        np.testing.assert_array_equal(got, want)


def test_unpruned_ease_equals_the_dense_closed_form():
    users, items = _log()
    n = 30
    model = ItemItem(CollabConfig(method="ease", l2=5.0, n_neighbors=n)).fit(users, items, n)
    dense = ease_weights(positive_matrix(users, items, n), 5.0)
    np.testing.assert_allclose(model.weights.toarray(), dense, rtol=1e-6, atol=1e-7)  # float32 storage
    hist = [[0, 3, 3, 6], [], [1, 29]]
    np.testing.assert_allclose(model.scores(Ragged.from_lists(hist)).toarray(), _dense_scores(dense, hist),
                               rtol=1e-5, atol=1e-6)


def test_ease_models_only_the_most_engaged_items_and_itemknn_is_the_pruned_cosine():
    users, items = _log()
    n = 30
    counts = np.asarray(positive_matrix(users, items, n).sum(axis=0)).ravel()  # distinct users per item
    model = ItemItem(CollabConfig(method="ease", l2=5.0, n_neighbors=n, max_items=10)).fit(users, items, n)
    modelled = np.sort(np.lexsort((np.arange(n), -counts))[:10])
    w = model.weights.toarray()
    outside = np.setdiff1d(np.arange(n), modelled)
    assert not w[outside].any() and not w[:, outside].any()
    x = positive_matrix(users, items, n)
    np.testing.assert_allclose(w[np.ix_(modelled, modelled)], ease_weights(x[:, modelled], 5.0), rtol=1e-6,
                               atol=1e-7)
    knn = ItemItem(CollabConfig(method="itemknn", n_neighbors=4)).fit(users, items, n)
    np.testing.assert_allclose(knn.weights.toarray(), cosine_topn(x, 4).toarray(), rtol=1e-6)
    assert (np.diff(knn.weights.indptr) <= 4).all()


@pytest.mark.parametrize("method, k", [("ease", 6), ("itemknn", 3)])  # item-kNN on 0/1 data: many tied scores
def test_collab_source_matches_a_dense_loop_and_is_batch_invariant(method, k):
    users, items = _log(seed=2, per_user=4)
    n = 30
    model = ItemItem(CollabConfig(method=method, l2=2.0, n_neighbors=8)).fit(users, items, n)
    src = CollabSource(model)
    hist = [[0, 3, 6], [], [1, 4, 4, 7, 29], [2], [-1, 5, 100]]  # -1 / 100: outside the catalogue, ignored
    exclude = [[0, 3, 6, 9], [], [1, 4, 7], [2, 5], []]
    req = _requests(hist, exclude)
    got_i, got_s = src.candidates(req, k)
    dense = _dense_scores(model.weights.toarray(), [[i for i in h if 0 <= i < n] for h in hist])
    for b in range(len(hist)):
        order = [c for c in sorted(range(n), key=lambda c: (-dense[b, c], c))
                 if dense[b, c] > 0 and c not in exclude[b]][:k]
        assert got_i[b].tolist() == order + [-1] * (k - len(order))
        np.testing.assert_allclose(got_s[b, :len(order)], dense[b, order], rtol=1e-5)
        assert np.isnan(got_s[b, len(order):]).all()
        alone_i, alone_s = src.candidates(_requests([hist[b]], [exclude[b]]), k)
        np.testing.assert_array_equal(alone_i[0], got_i[b])
        np.testing.assert_array_equal(alone_s[0], got_s[b])
    assert (got_i[1] == -1).all()  # no history: nothing (left to the other sources)
    if method == "itemknn":  # the case the partition must get right: a tie at the k-th score
        assert any(len(set(np.round(dense[b][dense[b] > 0], 6))) < (dense[b] > 0).sum() for b in range(len(hist)))


def test_save_load_round_trip(tmp_path):
    users, items = _log()
    model = ItemItem(CollabConfig(method="itemknn", n_neighbors=5)).fit(users, items, 30)
    model.save(tmp_path / "m")
    again = ItemItem.load(tmp_path / "m", 30)
    assert again.cfg == model.cfg
    assert (again.weights != model.weights).nnz == 0
    with pytest.raises(ValueError, match=r"weights of shape \(30, 30\), expected \(31, 31\)"):
        ItemItem.load(tmp_path / "m", 31)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"collab\.method: must be one of \['ease', 'itemknn', 'none'\], got 'als'"):
        CollabConfig(method="als")
    with pytest.raises(ConfigError, match=r"collab\.n_neighbors: must be >= 1, got 0"):
        CollabConfig(n_neighbors=0)
    from recsys.config import load_config

    with pytest.raises(ConfigError, match=r"retrieval\.collab_share: must be in \[0, 1 - popularity_share - "
                                          r"graph_share\], got 0.9"):
        load_config(None, ["retrieval.collab_share=0.9"])
    with pytest.raises(ConfigError, match=r"prerank\.feature_params\.collab\.l2: must be > 0"):
        load_config(None, ["prerank.feature_params.collab.l2=0"])
    assert sp.issparse(positive_matrix(np.array(["a"]), np.array([0]), 1))


def test_collab_source_breaks_ties_at_the_cut_by_the_lower_item():
    """Scores tied at the k-th place: the lower item indices are kept (a plain argpartition keeps others)."""
    model = ItemItem(CollabConfig(method="itemknn"))
    w = np.zeros((6, 6), dtype=np.float32)
    w[5, :5] = 1.0  # item 5 -> items 0..4 equally
    w[5, 4] = 2.0   # ... and item 4 more
    model.weights = sp.csr_matrix(w)
    items, scores = CollabSource(model).candidates(_requests([[5]], [[5]]), 3)
    assert items.tolist() == [[4, 0, 1]]
    np.testing.assert_array_equal(scores, [[2.0, 1.0, 1.0]])
