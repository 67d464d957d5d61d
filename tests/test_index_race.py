"""AnnIndex's lazily built exact index is published only once it is complete (a concurrent search never sees a
half-built one)."""

from __future__ import annotations

import threading

import numpy as np

from recsys.retrieval.index import AnnIndex


def test_concurrent_first_exact_searches_never_see_a_half_built_index(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    AnnIndex.build(x, "HNSW8").save(tmp_path / "i.faiss")
    idx = AnnIndex.load(tmp_path / "i.faiss")  # no vectors kept: the exact index is built lazily, on first use
    real_vectors = idx.vectors
    entered, release = threading.Event(), threading.Event()

    def slow_vectors():  # the first builder is held inside the build until the other search is done
        if not entered.is_set():
            entered.set()
            release.wait(10)
        return real_vectors()

    idx.vectors = slow_vectors
    q = rng.standard_normal((4, 8)).astype(np.float32)
    first: dict = {}
    t = threading.Thread(target=lambda: first.setdefault("ids", idx.search(q, 5, exact=True)[0]))
    t.start()
    assert entered.wait(10)
    ids, _ = idx.search(q, 5, exact=True)  # while the first build is in progress
    release.set()
    t.join(10)
    truth = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :5]
    assert (ids >= 0).all(), "a search returned padding: it used the exact index before it was filled"
    np.testing.assert_array_equal(np.sort(ids, axis=1), np.sort(truth, axis=1))
    np.testing.assert_array_equal(np.sort(first["ids"], axis=1), np.sort(truth, axis=1))
