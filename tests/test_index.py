"""AnnIndex: factory validation, recall against exact search, padding, save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.retrieval.index import VALID_FORMS, AnnIndex, parse_factory


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return _unit(rng, 5000, 32), _unit(rng, 100, 32)


def brute_force(x, q, k):
    s = q @ x.T
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(s, ids, axis=1)


# Isotropic random vectors are the worst case for IVF (every cell is about equally close to a query), so the
# IVF setting probes 40 of 64 lists here; on clustered data (below) a few lists suffice.
@pytest.mark.parametrize("factory,kw", [("HNSW32", {"ef_search": 128}), ("IVF64,Flat", {"nprobe": 40})])
def test_ann_recall_vs_exact(data, factory, kw):
    x, q = data
    index = AnnIndex.build(x, factory, threads=1, **kw)
    rec = index.recall_vs_exact(q, 10)
    assert rec >= 0.95, rec
    # the wrapper's own recall agrees with an independent brute force
    truth, _ = brute_force(x, q, 10)
    got, _ = index.search(q, 10, exact=False)
    indep = np.mean([len(set(got[b]) & set(truth[b])) / 10 for b in range(len(q))])
    assert indep == pytest.approx(rec)


def test_ivf_recall_on_clustered_data_with_few_probes():
    rng = np.random.default_rng(5)
    centres = _unit(rng, 64, 32)
    x = centres[rng.integers(0, 64, 5000)] + 0.25 * rng.standard_normal((5000, 32)).astype(np.float32) / np.sqrt(32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.choice(5000, 100, replace=False)] + 0.05 * rng.standard_normal((100, 32)).astype(np.float32)
    index = AnnIndex.build(x, "IVF64,Flat", nprobe=8, threads=1)
    assert index.recall_vs_exact(q, 10) >= 0.95


def test_flat_is_exact_and_sorted(data):
    x, q = data
    index = AnnIndex.build(x[:500], "Flat", threads=1)
    ids, scores = index.search(q[:20], 15)
    ref_ids, ref_scores = brute_force(x[:500], q[:20], 15)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    assert (ids == ref_ids).mean() > 0.99  # exact up to float ties
    assert ids.dtype == np.int64 and np.all(np.diff(scores, axis=1) <= 1e-7)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF4,Flat"])
def test_k_larger_than_n_pads(factory):
    rng = np.random.default_rng(1)
    x = _unit(rng, 300, 8)
    index = AnnIndex.build(x, factory, threads=1)
    ids, scores = index.search(x[:3], 310)
    assert ids.shape == (3, 310) and scores.shape == (3, 310)
    assert np.all(ids[:, 300:] == -1) and np.isnan(scores[:, 300:]).all()
    for b in range(3):  # every item exactly once, best first
        assert sorted(ids[b, :300].tolist()) == list(range(300))
        assert ids[b, 0] == b
    assert index.search(x[:2], 0)[0].shape == (2, 0)


def test_save_load_roundtrip_identical(data, tmp_path):
    x, q = data
    for factory in ("HNSW32", "IVF32,Flat"):
        index = AnnIndex.build(x, factory, nprobe=8, ef_search=64, threads=1)
        path = tmp_path / f"{factory.replace(',', '_')}.faiss"
        index.save(path)
        loaded = AnnIndex.load(path)
        a, sa = index.search(q, 50, exact=False)
        b, sb = loaded.search(q, 50, exact=False)
        assert np.array_equal(a, b) and np.array_equal(sa, sb)
        assert loaded.ntotal == len(x) and loaded.dim == 32
        np.testing.assert_allclose(loaded.vectors(), x, atol=1e-6)  # decoded for exact fallbacks


def test_search_params_change_results(data):
    x, q = data
    index = AnnIndex.build(x, "IVF32,Flat", nprobe=1, threads=1)
    low = index.recall_vs_exact(q, 10)
    index.set_search_params(nprobe=32)  # all lists: exhaustive
    assert index.recall_vs_exact(q, 10) == pytest.approx(1.0)
    assert low < 0.9


def test_pq_and_opq_build_and_caps(caplog):
    rng = np.random.default_rng(2)
    x = _unit(rng, 3000, 16)
    index = AnnIndex.build(x, "IVF1024,PQ4", nprobe=8, threads=1)
    assert "IVF76,PQ4x6" == index.factory  # nlist capped to N // 39, nbits to log2(N // 39)
    assert any("at most" in r.message for r in caplog.records)
    ids, _ = index.search(x[:5], 10, exact=False)
    assert ids.shape == (5, 10) and (ids[:, 0] == np.arange(5)).mean() >= 0.6
    small_opq = AnnIndex.build(x, "OPQ4,IVF16,PQ4x4", nprobe=16, threads=1)  # too few points to train OPQ
    assert small_opq.factory == "IVF16,PQ4x4"
    assert small_opq.recall_vs_exact(x[:20], 10, vectors=x) > 0.2
    with pytest.raises(ValueError, match="must divide"):
        AnnIndex.build(x, "IVF16,PQ5", threads=1)


@pytest.mark.parametrize("bad", ["LSH", "HNSW", "IVF,Flat", "IVF16,SQ8", "Flat,IVF16", "hnsw32", "PQ8", "",
                                 "OPQ8,IVF16,PQ4"])
def test_invalid_factory_lists_valid_forms(bad):
    with pytest.raises(ValueError) as exc:
        parse_factory(bad)
    msg = str(exc.value)
    assert "valid forms" in msg or "OPQ" in msg
    if "valid forms" in msg:
        for form in VALID_FORMS:
            assert form in msg


def test_bad_inputs():
    rng = np.random.default_rng(3)
    x = _unit(rng, 50, 4)
    index = AnnIndex.build(x, "Flat")
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.zeros((1, 5), np.float32), 3)
    with pytest.raises(ValueError, match="NaN"):
        AnnIndex.build(np.full((3, 4), np.nan, np.float32))
    with pytest.raises(FileNotFoundError):
        AnnIndex.load("/nonexistent/index.faiss")


def test_auto_mode_is_exhaustive_on_small_collections(data):
    x, q = data
    index = AnnIndex.build(x, "HNSW8", ef_search=1, threads=1)  # a deliberately poor graph search
    auto, _ = index.search(q, 10)  # N = 5000 <= 16384: brute force
    forced, _ = index.search(q, 10, exact=True)
    assert np.array_equal(auto, forced)
    assert index.recall_vs_exact(q, 10) < 0.99  # the graph itself (recall_vs_exact never goes exhaustive)
