"""Candidate sources and merge_candidates (against a slow per-row reference)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from recsys.retrieval.index import AnnIndex
from recsys.retrieval.sources import (
    AnnSource, PopularitySource, cold_rows, compact, exclusion_mask, first_occurrence, merge_candidates,
)
from recsys.types import Ragged, Requests


def slow_merge(outs: dict, quotas: dict, k: int, exclude: Ragged | None):
    """Per-row Python reference of merge_candidates' documented semantics."""
    names = list(outs)
    b = len(next(iter(outs.values()))[0])
    items = np.full((b, k), -1, np.int64)
    source = np.full((b, k), -1, np.int8)
    scores = {n: np.full((b, k), np.nan, np.float32) for n in names}
    for r in range(b):
        ex = set() if exclude is None else set(exclude.row(r).tolist())
        owner, own = {}, {n: [] for n in names}
        for j, n in enumerate(names):
            for it in outs[n][0][r]:
                it = int(it)
                if it >= 0 and it not in ex and it not in owner:
                    owner[it] = j
                    own[n].append(it)
        result = []
        for n in names:
            result += own[n][: max(0, min(quotas.get(n, 0), k - len(result)))]
        chosen = set(result)
        for n in names:
            for it in own[n]:
                if len(result) >= k:
                    break
                if it not in chosen:
                    result.append(it)
                    chosen.add(it)
        for c, it in enumerate(result):
            items[r, c] = it
            source[r, c] = owner[it]
            for n in names:
                row_items = list(outs[n][0][r])
                if it in row_items:
                    scores[n][r, c] = outs[n][1][r][row_items.index(it)]
    return items, source, scores


def _random_outputs(rng, b, n, widths, pad_frac=0.1):
    outs = {}
    for name, w in widths.items():
        items = rng.integers(0, n, (b, w))
        items[rng.random((b, w)) < pad_frac] = -1
        outs[name] = (items, rng.normal(size=(b, w)).astype(np.float32))
    return outs


@pytest.mark.parametrize("seed", range(6))
def test_merge_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    b, n = 7, 40
    outs = _random_outputs(rng, b, n, {"ann": 15, "graph": 8, "popularity": 20})
    quotas = {"ann": int(rng.integers(0, 12)), "graph": int(rng.integers(0, 5)), "popularity": int(rng.integers(0, 6))}
    exclude = Ragged.from_lists([rng.choice(n, size=rng.integers(0, 10), replace=False) for _ in range(b)])
    for k in (0, 5, 20, 60):
        got = merge_candidates(outs, quotas, k, exclude if seed % 2 == 0 else None)
        ref = slow_merge(outs, quotas, k, exclude if seed % 2 == 0 else None)
        assert np.array_equal(got.items, ref[0]), (k, got.items, ref[0])
        assert np.array_equal(got.source, ref[1])
        for name in outs:
            np.testing.assert_array_equal(got.scores[name], ref[2][name])
        assert got.names == ["ann", "graph", "popularity"]


def test_merge_dedup_quota_exclusion_fill():
    ann = (np.array([[1, 2, 3, 4, 5]]), np.array([[0.9, 0.8, 0.7, 0.6, 0.5]]))
    pop = (np.array([[3, 7, 8, 1, 9]]), np.array([[50.0, 40, 30, 20, 10]]))
    c = merge_candidates({"ann": ann, "popularity": pop}, {"ann": 2, "popularity": 2}, 6,
                         exclude=Ragged.from_lists([[2]]))
    # ann quota 2 -> 1, 3 (2 excluded); pop quota 2 -> 7, 8 (3 and 1 belong to ann); fill in priority: 4, 5
    assert c.items.tolist() == [[1, 3, 7, 8, 4, 5]]
    assert c.source.tolist() == [[0, 0, 1, 1, 0, 0]]
    # an item returned by both keeps both scores; attribution goes to ann (first in priority)
    assert c.scores["popularity"][0, 1] == 50.0 and c.scores["ann"][0, 1] == pytest.approx(0.7)
    assert np.isnan(c.scores["ann"][0, 2]) and np.isnan(c.scores["popularity"][0, 4])
    assert c.counts() == {"ann": 4, "popularity": 2}
    # k beyond all candidates: everything once, then -1 padding
    big = merge_candidates({"ann": ann, "popularity": pop}, {"ann": 100}, 20)
    row = big.items[0]
    assert sorted(row[row >= 0].tolist()) == [1, 2, 3, 4, 5, 7, 8, 9]
    assert np.all(row[8:] == -1) and np.all(big.source[0, 8:] == -1)


def test_merge_errors():
    out = {"ann": (np.zeros((2, 3), np.int64), np.zeros((2, 3)))}
    with pytest.raises(ValueError, match="unknown source"):
        merge_candidates(out, {"graph": 3}, 3)
    with pytest.raises(ValueError, match="rows"):
        merge_candidates({**out, "pop": (np.zeros((3, 3), np.int64), np.zeros((3, 3)))}, {}, 3)
    with pytest.raises(ValueError, match=">= 0"):
        merge_candidates(out, {"ann": -1}, 3)


def test_merge_is_fast_enough():
    rng = np.random.default_rng(0)
    b, n = 1000, 200_000
    outs = _random_outputs(rng, b, n, {"ann": 1000, "popularity": 1000}, pad_frac=0.0)
    exclude = Ragged.from_lists([rng.integers(0, n, 50) for _ in range(b)])
    t = time.perf_counter()
    c = merge_candidates(outs, {"ann": 950, "popularity": 50}, 1000, exclude)
    elapsed = time.perf_counter() - t
    assert c.items.shape == (b, 1000)
    assert elapsed < 5.0, elapsed  # ~0.5 s on a free core; generous for a shared CI machine


def test_helpers():
    items = np.array([[3, -1, 3, 0, 5], [-1, 0, 0, 2, -1]])
    assert first_occurrence(items).tolist() == [[True, False, False, True, True], [False, True, False, True, False]]
    ex = Ragged.from_lists([[5, 9], [2]])
    assert exclusion_mask(items, ex).tolist() == [[False, False, False, False, True],
                                                  [False, False, False, True, False]]
    it, sc = compact(items, items.astype(float), exclusion_mask(items, ex), 4)
    assert it.tolist() == [[3, 3, 0, -1], [0, 0, -1, -1]]
    assert np.isnan(sc[0, 3]) and sc[1, 1] == 0


def _requests(histories, users=None, exclude=None):
    b = len(histories)
    hist = Ragged.from_lists(histories)
    return Requests(users=np.arange(b) if users is None else np.asarray(users), timestamps=np.zeros(b, np.int64),
                    history=hist, exclude=exclude)


def test_popularity_source_ranks_excludes_and_windows():
    items = np.array([0, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    times = np.array([0, 0, 0, 0, 0, 0, 0, 0, 100, 100])
    pop = PopularitySource.from_events(items, times, n_items=6)
    assert pop.ranked.tolist() == [3, 2, 1, 0, 4, 5]
    req = _requests([[], []], exclude=Ragged.from_lists([[3, 1], []]))
    it, sc = pop.candidates(req, 3)
    assert it.tolist() == [[2, 0, 4], [3, 2, 1]]
    assert sc[0].tolist() == [3.0, 1.0, 0.0]
    it, _ = pop.candidates(req, 10)  # k beyond the catalogue
    assert it[0].tolist() == [2, 0, 4, 5, -1, -1, -1, -1, -1, -1]
    recent = PopularitySource.from_events(items, times, 6, window_seconds=50)  # only t >= 50: item 3 twice
    assert recent.counts.tolist() == [0, 0, 0, 2, 0, 0]


def test_ann_source_cold_rows_and_exclusion():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((50, 8)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = AnnIndex.build(v, "Flat")
    req = _requests([[1, 2], [], [4]], users=[0, 9, 9], exclude=Ragged.from_lists([[7], [], []]))
    queries = v[[7, 8, 4]]
    src = AnnSource(index, lambda r: queries[: len(r)] if len(r) == 3 else queries[[0, 2]],
                    is_cold=lambda r: cold_rows(r, user_oov=9))
    it, sc = src.candidates(req, 5)
    assert np.all(it[1] == -1) and np.isnan(sc[1]).all()  # OOV user without history: cold
    ref, _ = index.search(queries[[0, 2]], 6, exact=True)
    assert it[0].tolist() == [i for i in ref[0] if i != 7][:5]  # its own best match (7) excluded
    assert it[2].tolist() == ref[1][:5].tolist()
    assert cold_rows(req, 9).tolist() == [False, True, False]
