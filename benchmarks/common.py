"""Shared pieces of the stage benchmarks (bench_prerank.py, bench_rank.py): latency summaries and the world
they time on (a synthetic world or a dataset folder, the engine's default split, a small exact-search
two-tower, and a seeded sample of test-window requests)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np


def pct(ms: list[float]) -> dict:
    """p50 / p99 / mean / max of latencies in milliseconds."""
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "max_ms": float(a.max())}


def timed(fn) -> float:
    """Milliseconds one call of ``fn()`` takes."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def bench_world(data: Path | None, preset: str, seed: int, impressions: int, min_items: int, what: str):
    """(dataset, split, catalogue, retrieval stage): ``data`` read, or the ``preset`` world synthesized with
    ``impressions`` impressions; split with the default SplitConfig; a small two-tower (dim 32, 3 epochs, one
    thread, exact Flat index) fitted on the train window. Exits when the catalogue has fewer than
    ``min_items`` items (``what`` names the flag that asked for them)."""
    from recsys.configlib import SplitConfig
    from recsys.data.catalog import Catalog
    from recsys.data.schema import read_dataset
    from recsys.data.split import split_dataset
    from recsys.data.synthetic import synthesize
    from recsys.retrieval.config import RetrievalConfig, TwoTowerConfig
    from recsys.retrieval.stage import RetrievalStage

    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            synthesize(preset, seed, Path(tmp) / "world", n_impressions=impressions)
            ds = read_dataset(Path(tmp) / "world")
        else:
            ds = read_dataset(data)
    split = split_dataset(ds, SplitConfig())
    catalog = Catalog.from_dataset(ds, train=split["train"])
    if catalog.n_items < min_items:
        raise SystemExit(f"the catalogue has {catalog.n_items} items < {what} {min_items}")
    rcfg = RetrievalConfig(two_tower=TwoTowerConfig(dim=32, emb_dim=32, feature_dim=8, hidden=(64,), max_epochs=3,
                                                    threads=1), index_factory="Flat", index_threads=1)
    from recsys.stages.base import FitContext

    retrieval = RetrievalStage(rcfg).fit(FitContext(ds, catalog, split, "train", split.before("train"),
                                                    valid=split["prerank"]))
    return ds, split, catalog, retrieval


def fit_stage(stage, ds, split, catalog, window: str, upstream):
    """Fit a scoring stage on ``window`` with the candidates ``upstream`` (an Engine) serves it and point-in-time
    features as of the window (as ``recsys.training`` does)."""
    from recsys.stages.base import FitContext
    from recsys.training import ContextsAt, lookback_events

    windows = {"retrieval": split.names[0], window: window}
    at = ContextsAt(ds, catalog, lookback_events(split, windows, window, catalog.time_col))
    return stage.fit(FitContext(ds, catalog, split, window, split.before(window), upstream=upstream,
                                features=at.get))


def test_requests(ds, split, catalog, users: int, seed: int):
    """Requests of ``users`` test-window users (seeded sample), at their first test event, with its context and
    their engagements before the test window as history."""
    from recsys.data.catalog import positives

    first = split["test"].drop_duplicates(catalog.user_col)
    first = first.iloc[np.random.default_rng(seed).permutation(len(first))[:users]]
    context = {c: first[c].to_numpy() for c in ds.schema.context_columns if c in first.columns}
    return catalog.requests(first[catalog.user_col].to_numpy(), first[catalog.time_col].to_numpy(),
                            positives(split.before("test"), ds.schema.positive_label), context=context)
