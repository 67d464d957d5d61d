"""Baselines' settings in the config (eval.baseline_params), count labels, EASE's BLAS thread cap and memory
check, and a failing baseline reported as failed while the others are reported."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import offline_eval.baselines as B
from offline_eval.evaluator import run_evaluation
from offline_eval.report import format_table
from recsys.config import ConfigError, load_config
from recsys.data.catalog import Catalog
from recsys.data.schema import Dataset, col, make_schema, validate

T0 = 1_700_000_000


def count_log(n_users: int = 30, n_items: int = 25, seed: int = 0, kind: str = "count") -> Dataset:
    """An implicit log with play counts up to 352,698 (a music log's scale) and times."""
    rng = np.random.default_rng(seed)
    rows = {(u, int(i)) for u in range(n_users) for i in rng.choice(n_items, size=8, replace=False)}
    rows = sorted(rows)
    plays = np.clip((rng.pareto(0.8, len(rows)) * 50).astype(np.int64), 1, 352_698)
    plays[0] = 352_698
    inter = pd.DataFrame({
        "user_id": [u for u, _ in rows], "item_id": [i for _, i in rows],
        "timestamp": T0 + rng.permutation(len(rows)).astype(np.int64) * 60,
        "interaction": np.ones(len(rows), dtype=np.int8), "plays": plays,
    })
    schema = make_schema("plays", {
        "user_id": col("user_id"), "item_id": col("item_id"), "timestamp": col("timestamp"),
        "interaction": col("label", "binary"), "plays": col("label", kind)}, positive_label="interaction")
    return validate(Dataset(schema=schema, interactions=inter))


def test_baseline_params_are_config_keys_checked_by_name():
    cfg = load_config(None, ["eval.baseline_params.ease.l2=200", "eval.baseline_params.itemknn.n_neighbors=7",
                             "eval.baseline_params.svd.counts=binary"])
    assert cfg.eval.baseline_params.of("ease") == {"l2": 200.0, "max_items": 20000, "blas_threads": 1}
    assert cfg.eval.baseline_params.of("itemknn") == {"n_neighbors": 7}
    assert cfg.eval.baseline_params.of("random") == {}
    assert B.make_baseline("svd", **cfg.eval.baseline_params.of("svd")).counts.value == "binary"
    with pytest.raises(ConfigError, match=r"eval\.baseline_params\.ease\.l2: must be > 0, got -1"):
        load_config(None, ["eval.baseline_params.ease.l2=-1"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'eval\.baseline_params\.ease\.lambda'"):
        load_config(None, ["eval.baseline_params.ease.lambda=3"])
    with pytest.raises(ConfigError, match=r"eval\.baseline_params\.svd\.counts: 'sqrt' is not allowed"):
        load_config(None, ["eval.baseline_params.svd.counts=sqrt"])
    als = load_config(None, ["eval.baseline_params.als.factors=16", "eval.baseline_params.als.alpha=40"])
    assert als.eval.baseline_params.of("als") == {"factors": 16, "regularization": 0.05, "alpha": 40.0,
                                                  "iterations": 15}
    with pytest.raises(ConfigError, match=r"eval\.baseline_params\.als\.factors: must be >= 1, got 0"):
        load_config(None, ["eval.baseline_params.als.factors=0"])


def test_run_evaluation_builds_each_baseline_with_its_settings(tmp_path, monkeypatch):
    built = {}
    real = B.make_baseline

    def spy(name, seed=0, **params):
        built[name] = params
        return real(name, seed=seed, **params)

    monkeypatch.setattr(B, "make_baseline", spy)
    cfg = load_config(None, ["split.windows={train: 0.8, test: 0.2}", "eval.bootstrap_samples=10",
                             "eval.baseline_params.itemknn.n_neighbors=3", "eval.baseline_params.ease.l2=20"])
    run_evaluation(count_log(), cfg, tmp_path / "r", baselines=["itemknn", "ease"])
    assert built == {"itemknn": {"n_neighbors": 3}, "ease": {"l2": 20.0, "max_items": 20000, "blas_threads": 1}}


def test_svd_reads_play_counts_as_log_counts_or_binary():
    ds = count_log()
    cat = Catalog.from_dataset(ds)
    model = B.SVDBaseline(seed=0, n_factors=4, n_epochs=10).fit(ds.interactions, cat, ds.schema)
    assert "log(1 + count)" in model.rating_source and np.isfinite(model.qi).all()
    assert model.algo.trainset.rating_scale == (0.0, pytest.approx(np.log1p(352_698)))
    binary = B.SVDBaseline(seed=0, n_factors=4, n_epochs=10, counts="binary").fit(ds.interactions, cat, ds.schema)
    assert "sampled" in binary.rating_source
    with pytest.raises(ValueError, match="parameter 'counts' must be one of 'log', 'binary'"):
        B.SVDBaseline(counts="sqrt")


def test_ease_inverts_with_the_blas_threads_it_is_given(monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits
    import scipy.linalg

    seen = []
    real = scipy.linalg.lapack.dpotrf

    def spy(*args, **kwargs):
        seen.append({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy.linalg.lapack, "dpotrf", spy)
    ds = count_log()
    cat = Catalog.from_dataset(ds)
    with threadpool_limits(limits=2, user_api="blas"):
        B.EASEBaseline(l2=10.0).fit(ds.interactions, cat, ds.schema)
        B.EASEBaseline(l2=10.0, blas_threads=2).fit(ds.interactions, cat, ds.schema)
    assert seen == [{1}, {2}]


def test_ease_refuses_an_inversion_that_does_not_fit_in_memory(monkeypatch):
    monkeypatch.setattr(B, "available_memory", lambda: 1000)
    ds = count_log()
    with pytest.raises(MemoryError, match=r"ease: 25 modelled items need 0\.0 GiB .* 0\.0 GiB is available; "
                                          r"lower eval\.baseline_params\.ease\.max_items"):
        B.EASEBaseline().fit(ds.interactions, Catalog.from_dataset(ds), ds.schema)
    assert B.ease_memory_bytes(17_632) > 2.4 * 2**30  # the dense Gram matrix alone: 8 M^2 bytes


def test_a_failing_baseline_is_reported_as_failed_and_the_others_are_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(B, "available_memory", lambda: 1000)  # ease cannot fit
    ds = count_log(kind="graded")  # raw play counts read as ratings: svd's SGD diverges
    cfg = load_config(None, ["split.windows={train: 0.8, test: 0.2}", "eval.bootstrap_samples=10",
                             "eval.baseline_params.svd.lr_all=0.05"])
    with np.errstate(all="ignore"):
        m = run_evaluation(ds, cfg, tmp_path / "r", baselines=["popularity", "svd", "ease", "itemknn"])
    assert set(m["systems"]) == {"popularity", "itemknn"}
    assert m["failed"]["ease"].startswith("fit failed: MemoryError: ease: 25 modelled items need")
    assert m["failed"]["svd"] == "fit failed: RuntimeError: svd: fitting produced non-finite values (NaN/inf) in bu"
    on_disk = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert on_disk["failed"] == m["failed"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Failed systems" in md and "| ease | fit failed: MemoryError" in md
    table = format_table(m)
    assert "svd         FAILED: fit failed: RuntimeError" in table and "popularity" in table
