"""Train the engine's stages on their windows and write one bundle; load a bundle back into an Engine.

Windows (``split.windows`` in time order; see :mod:`recsys.data.split`):

    train    -> retrieval (two-tower + FAISS, popularity, graph PPR), early-stopped on the next window
    prerank  -> the pre-ranker, on the retrieval stage's candidates for this window
    rank     -> the heavy ranker, on this window's impressions (or pre-ranked candidates on rating data)
    test     -> evaluation only, never touched here

The catalogue's item vocabulary covers the whole dataset (the catalogue is known); while the stages train,
its user vocabulary holds the users of the ``train`` window. The bundle's serving snapshot is then refreshed
(:func:`refresh_snapshot`): users of every window before the held-out one.

Features are point-in-time: a stage's training rows are assembled with a feature context fitted on the
look-back (:func:`lookback_events`) that ends where its window begins — the pre-ranker's on the ``train``
window, the heavy ranker's (and the pre-ranker scores among its inputs) on the look-back ending at the ``rank``
window — as the serving snapshot's context ends at the test window. (With ``retrieval.refit: false`` each
stage keeps the context it was trained with.)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path

import numpy as np

from recsys.bundle import Bundle, data_fingerprint, load_bundle, write_bundle
from recsys.config import Config, ConfigError, from_dict, to_dict
from recsys.data.catalog import Catalog
from recsys.data.schema import Dataset
from recsys.data.split import Split, split_dataset
from recsys.data.vocab import Vocab
from recsys.engine import Engine

logger = logging.getLogger(__name__)

NO_GRAPH_STAGE = "prerank_no_graph"
NO_GRAPH_RANK = "rank_no_graph"  # the heavy ranker of the `no_graph_features` system
NO_PRERANK_RANK = "rank_no_prerank"  # the heavy ranker of the `no_prerank` system
ABLATION_ARCHS = ("mmoe", "shared_bottom", "single_task")
GRAPH_FEATURES = ("item_pagerank", "ppr", "co_engagement", "src_graph")


def stage_windows(split: Split) -> dict[str, str]:
    """Which window each stage trains on: retrieval the first, the pre-ranker the second, the heavy ranker
    the third (when there are four or more); the last window is the test window. Retrieval early-stops on
    the second window (model selection only; the pre-ranker is trained on candidates there)."""
    names = split.names
    if len(names) < 3:
        raise ConfigError(f"split.windows: the engine needs at least 3 windows (train, ..., test), got {names}")
    out = {"retrieval": names[0], "retrieval_valid": names[1], "prerank": names[1], "test": names[-1]}
    if len(names) >= 4:
        out["rank"] = names[2]
    return out


def save_catalog(catalog: Catalog, folder: Path) -> None:
    catalog.users.save(folder / "users.parquet")
    catalog.items.save(folder / "items.parquet")


def load_catalog(folder: Path) -> Catalog:
    return Catalog(Vocab.load(folder / "users.parquet"), Vocab.load(folder / "items.parquet"))


def train_engine(ds: Dataset, cfg: Config, out: str | Path) -> Bundle:
    """Fit every configured stage on its window and write the bundle under ``out`` (a new version).

    With ``retrieval.refit`` (default), once the downstream stages are trained on candidates of the
    train-window retrieval model, the serving snapshot is refreshed the way a production system refreshes it:
    the two-tower is retrained on every window before the held-out one (for the number of epochs early
    stopping chose) and the feature context is refitted on the same *length* of history as at training, ending
    at the held-out window (point-in-time features with a fixed look-back, so count features keep their scale).
    """
    from recsys.retrieval.stage import RetrievalStage

    split = split_dataset(ds, cfg.split)
    windows = stage_windows(split)
    catalog = Catalog.from_dataset(ds, train=split[windows["retrieval"]])
    logger.info(
        "training on windows %s (catalogue: %d users, %d items)", windows, catalog.n_users, catalog.n_items
    )
    retrieval = RetrievalStage().fit(
        ds, catalog, split[windows["retrieval"]], split[windows["retrieval_valid"]], cfg.retrieval
    )
    metrics: dict = {"retrieval": {"epochs": retrieval.history}}
    scoring: dict[str, object] = {}
    if cfg.prerank.enabled:
        from recsys.prerank.stage import fit_on_split

        scoring["prerank"] = fit_on_split(ds, catalog, retrieval, split, cfg.prerank)
        metrics["prerank"] = scoring["prerank"].valid_metrics
        if cfg.prerank.ablate_graph:
            # the same pre-ranker without its graph features, for the `no_graph_features` ablation
            no_graph = dataclasses.replace(cfg.prerank, features=tuple(
                n for n in scoring["prerank"].feature_names if n not in GRAPH_FEATURES))
            scoring[NO_GRAPH_STAGE] = fit_on_split(ds, catalog, retrieval, split, no_graph)
            metrics[NO_GRAPH_STAGE] = scoring[NO_GRAPH_STAGE].valid_metrics
    if cfg.rank.enabled and "rank" in windows:
        from recsys.rank.stage import fit_on_split as fit_rank

        # point-in-time features: the heavy ranker's rows (and the pre-ranker scores among them) are computed
        # with a feature context as of the start of its window, as a production log of served features would
        # be, and as serving computes them after refresh_snapshot (no train/serve skew in feature freshness)
        at_rank = ContextsAt(ds, catalog, lookback_events(split, windows, "rank", catalog.time_col))

        def fit(upstream, rank_cfg):
            return fit_rank(ds, catalog, retrieval, at_rank.stage(upstream), at_rank.get(rank_cfg), split, rank_cfg)

        scoring["rank"] = fit(scoring.get("prerank"), cfg.rank)
        metrics["rank"] = scoring["rank"].valid_metrics
        if cfg.rank.ablate_arch:
            # the same heavy ranker with another multi-task core, for the `shared_bottom` / `single_task` systems
            for arch in ABLATION_ARCHS:
                if arch == cfg.rank.arch:
                    continue
                scoring[f"rank_{arch}"] = fit(scoring.get("prerank"), dataclasses.replace(cfg.rank, arch=arch))
                metrics[f"rank_{arch}"] = scoring[f"rank_{arch}"].valid_metrics
        if cfg.rank.ablate_upstream and "prerank" in scoring:
            # the heavy ranker learns from its upstream stages' outputs (candidates, the pre-ranker's score), so a
            # system with an upstream stage removed or changed gets a heavy ranker trained that way
            scoring[NO_PRERANK_RANK] = fit(None, dataclasses.replace(cfg.rank, features=tuple(
                n for n in scoring["rank"].enc.names if n != "prerank_score")))
            metrics[NO_PRERANK_RANK] = scoring[NO_PRERANK_RANK].valid_metrics
            if NO_GRAPH_STAGE in scoring:
                no_graph = dataclasses.replace(cfg.rank, features=tuple(
                    n for n in scoring["rank"].enc.names if n not in GRAPH_FEATURES))
                scoring[NO_GRAPH_RANK] = fit(scoring[NO_GRAPH_STAGE], no_graph)
                metrics[NO_GRAPH_RANK] = scoring[NO_GRAPH_RANK].valid_metrics
    if cfg.retrieval.refit:
        catalog, retrieval = refresh_snapshot(ds, cfg, split, windows, retrieval, scoring)
        metrics["retrieval"]["refit"] = {"users": catalog.n_users, "epochs": len(retrieval.history)}
    writers = {"catalog": lambda d: save_catalog(catalog, d), "retrieval": retrieval.save}
    writers.update({name: stage.save for name, stage in scoring.items()})
    data = data_fingerprint(ds.path) if ds.path is not None else {"sha256": None}
    data["windows"] = windows
    data["split"] = split.stats()
    return write_bundle(out, writers, config=to_dict(cfg), data=data, metrics=metrics)


def lookback_events(split: Split, windows: dict, at: str, time_col: str):
    """The events a feature context sees when a stage serves the window ``at``: everything before it, within
    a look-back as long as the retrieval window (so count features keep the scale they were trained with)."""
    history = split.before(windows[at])
    train, t = split[windows["retrieval"]], time_col
    lookback = int(train[t].max() - train[t].min()) + 1
    end = int(split[windows[at]][t].min()) if len(split[windows[at]]) else int(history[t].max()) + 1
    return history[history[t].to_numpy() >= end - lookback]


class ContextsAt:
    """Feature contexts fitted on one set of events (:func:`lookback_events`), one per distinct
    ``(graph, feature_params)`` of the stages that ask."""

    def __init__(self, ds: Dataset, catalog: Catalog, events) -> None:
        self.ds, self.catalog, self.events = ds, catalog, events
        self._cache: dict[str, object] = {}

    def get(self, stage_cfg):
        from recsys.features import FeatureContext

        key = repr((stage_cfg.graph, stage_cfg.feature_params))
        if key not in self._cache:
            self._cache[key] = FeatureContext.fit(self.ds, self.catalog, self.events, stage_cfg.graph,
                                                  stage_cfg.feature_params)
        return self._cache[key]

    def stage(self, stage):
        """A shallow copy of a fitted scoring stage (or None) that computes its features with these events."""
        if stage is None:
            return None
        out = copy.copy(stage)
        out.ctx = self.get(stage.cfg)
        return out


def refresh_snapshot(ds: Dataset, cfg: Config, split: Split, windows: dict, retrieval, scoring: dict):
    """Retrain retrieval on every window before the held-out one and refit each scoring stage's feature
    context on the same look-back ending there. Returns the serving (catalog, retrieval stage)."""
    from recsys.retrieval.stage import RetrievalStage

    history = split.before(windows["test"])
    serving = Catalog.from_dataset(ds, train=history)
    recalls = [row.get(f"recall@{cfg.retrieval.two_tower.eval_k}", float("nan")) for row in retrieval.history]
    finite = [i for i, r in enumerate(recalls) if r == r]
    best_epoch = (max(finite, key=lambda i: recalls[i]) + 1) if finite else len(recalls)
    tt = dataclasses.replace(cfg.retrieval.two_tower, max_epochs=max(best_epoch, 1))
    logger.info("refit: two-tower on %d windows before %r for %d epochs (%d users)",
                split.names.index(windows["test"]), windows["test"], tt.max_epochs, serving.n_users)
    refit = RetrievalStage().fit(ds, serving, history, None, dataclasses.replace(cfg.retrieval, two_tower=tt))
    at_test = ContextsAt(ds, serving, lookback_events(split, windows, "test", serving.time_col))
    for stage in scoring.values():
        stage.ctx = at_test.get(stage.cfg)
    return serving, refit


def load_engine(path: str | Path) -> Engine:
    """Verify a bundle (every checksum before parsing) and build the Engine from its stages."""
    from recsys.retrieval.stage import RetrievalStage

    bundle = load_bundle(path)
    cfg = from_dict(Config, bundle.manifest["config"])
    catalog = load_catalog(bundle.stage_dir("catalog"))  # the verified private copy (recsys.bundle)
    retrieval = RetrievalStage.load(bundle.stage_dir("retrieval"), catalog)
    prerank = ranker = None
    if "prerank" in bundle.stages:
        from recsys.prerank.stage import PrerankStage

        prerank = PrerankStage.load(bundle.stage_dir("prerank"), catalog)
    if "rank" in bundle.stages:
        from recsys.rank.stage import RankStage

        ranker = RankStage.load(bundle.stage_dir("rank"), catalog)
    return Engine.from_config(retrieval, cfg.engine, prerank=prerank, ranker=ranker, name="engine",
                              version=bundle.version, catalog=catalog)


def ablations(engine: Engine, bundle_path: str | Path) -> dict[str, Engine]:
    """The engine with a stage removed or replaced, by system name (for the evaluation report).

    ``retrieval_only`` (no scoring stage), ``no_prerank`` (the heavy ranker on retrieval order; the one trained
    that way when the bundle has it, ``rank.ablate_upstream``),
    ``prerank_only`` (no heavy ranker), ``shared_bottom`` / ``single_task`` (the heavy ranker with another
    multi-task core, when the bundle has them), ``no_exposure`` (a heavy ranker with the exposure head valuing
    candidates without the exposure factor, ``rank.value.exposure_power = 0``), ``no_graph_features`` (the
    pre-ranker trained without its graph features, when the bundle has it, followed by the heavy ranker trained
    on it without graph features when the bundle has that) and ``prerank_only_no_graph`` (that pre-ranker alone,
    the counterpart of ``prerank_only``; the evaluation compares the two).
    """
    out: dict[str, Engine] = {}
    names = [s.name for s, _ in engine.stages]
    if names:
        out["retrieval_only"] = dataclasses.replace(engine, stages=[], name="retrieval_only")
    bundle = load_bundle(bundle_path)
    if "prerank" in names and "rank" in names:
        out["no_prerank"] = engine.without("prerank", name="no_prerank")
        if NO_PRERANK_RANK in bundle.stages:
            from recsys.rank.stage import RankStage

            alt = RankStage.load(bundle.stage_dir(NO_PRERANK_RANK), engine.catalog)
            alt.name = "rank"
            out["no_prerank"] = dataclasses.replace(out["no_prerank"], stages=[
                (alt if s.name == "rank" else s, c) for s, c in out["no_prerank"].stages])
        out["prerank_only"] = engine.without("rank", name="prerank_only")
    if "rank" in names:
        from recsys.rank.stage import RankStage

        for arch in ABLATION_ARCHS:
            if f"rank_{arch}" in bundle.stages:
                alt = RankStage.load(bundle.stage_dir(f"rank_{arch}"), engine.catalog)
                alt.name = "rank"
                stages = [(alt if s.name == "rank" else s, c) for s, c in engine.stages]
                out[arch] = dataclasses.replace(engine, stages=stages, name=arch)
        ranker = next(s for s, _ in engine.stages if s.name == "rank")
        if getattr(ranker, "exposure_index", None) is not None and ranker.cfg.value.exposure_power != 0:
            # the same heavy ranker valuing what it would show regardless of the logging policy's exposure
            alt = ranker.with_value(dataclasses.replace(ranker.cfg.value, exposure_power=0.0))
            stages = [(alt if s.name == "rank" else s, c) for s, c in engine.stages]
            out["no_exposure"] = dataclasses.replace(engine, stages=stages, name="no_exposure")
    if "prerank" in names and NO_GRAPH_STAGE in bundle.stages:
        from recsys.prerank.stage import PrerankStage

        alt = PrerankStage.load(bundle.stage_dir(NO_GRAPH_STAGE), engine.catalog)
        alt.name = "prerank"
        swap = {"prerank": alt}
        if "rank" in names and NO_GRAPH_RANK in bundle.stages:
            from recsys.rank.stage import RankStage

            swap["rank"] = RankStage.load(bundle.stage_dir(NO_GRAPH_RANK), engine.catalog)
            swap["rank"].name = "rank"
        stages = [(swap.get(s.name, s), c) for s, c in engine.stages]
        out["no_graph_features"] = dataclasses.replace(engine, stages=stages, name="no_graph_features")
        if "prerank_only" in out:
            # the pre-ranker alone with and without its graph features: no heavy ranker in between
            stages = [(alt if s.name == "prerank" else s, c) for s, c in out["prerank_only"].stages]
            out["prerank_only_no_graph"] = dataclasses.replace(engine, stages=stages, name="prerank_only_no_graph")
    return out


def calibration_reports(systems: dict[str, Engine], ds: Dataset, split: Split) -> tuple[dict, dict]:
    """Probability quality of each system's heavy ranker on the held-out window's full (not downsampled)
    distribution (its logged impressions, or its engagements on rating data).

    Returns ``({system: {task: report}}, {"system/task": reliability bins})``; a report holds logloss_raw
    (before recalibration), logloss, ne, auc, calibration (sum p / sum y), ece and, on synthetic data, the mean
    absolute error against the true probabilities (see :meth:`recsys.rank.stage.RankStage.calibration`).
    """
    windows = stage_windows(split)
    reports: dict = {}
    bins: dict = {}
    done: dict = {}  # systems sharing the heavy ranker's network and upstream (e.g. no_exposure) share the report
    for name, engine in systems.items():
        stages = {s.name: s for s, _ in engine.stages}
        if "rank" not in stages:
            continue
        key = (id(getattr(stages["rank"], "net", stages["rank"])), id(stages.get("prerank")), id(engine.retrieval))
        if key not in done:
            done[key] = stages["rank"].calibration(ds, engine.catalog, engine.retrieval, stages.get("prerank"), None,
                                                   split[windows["test"]], split.before(windows["test"]))
        rep = done[key]
        reports[name] = {t: {k: v for k, v in r.items() if k != "reliability"} for t, r in rep.items()}
        for task, r in rep.items():
            if "reliability" in r:
                bins[f"{name}/{task}"] = r["reliability"]
    return reports, bins


def index_recall(engine: Engine, requests, ks: tuple[int, ...] = (100, 1000)) -> dict:
    """The retrieval index's recall@k against exact inner-product search, on the users of ``requests``:
    the ANN structure is forced (``exact=False``) even where serving would fall back to exhaustive search on
    a small catalogue (``exact_fallback_in_serving``). Cold requests (no user vector) are skipped."""
    retrieval = engine.retrieval
    req = engine.encode(requests)
    warm = np.flatnonzero(~retrieval.is_cold(req))
    if not len(warm):
        return {}
    q = retrieval.user_vectors(req.take(warm))
    index = retrieval.index
    out = {"factory": index.factory, "n_items": index.ntotal, "queries": int(len(warm)),
           "exact_fallback_in_serving": bool(index.ntotal <= 16384)}
    for k in ks:
        if k <= index.ntotal:
            out[f"recall@{k}_vs_exact"] = index.recall_vs_exact(q, k)
    return out
