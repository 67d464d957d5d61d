"""Train the engine's stages on their windows and write one bundle; load a bundle back into an Engine.

Windows (``split.windows`` in time order; see :mod:`recsys.data.split`):

    train    -> retrieval (two-tower + FAISS, popularity), early-stopped on the next window
    prerank  -> the pre-ranker, on the retrieval stage's candidates for this window (added by later stages)
    rank     -> the heavy ranker, on the pre-ranker's candidates for this window (added by later stages)
    test     -> evaluation only, never touched here

The catalogue's item vocabulary covers the whole dataset (the catalogue is known); its user vocabulary holds
the users of the ``train`` window, so every later user is handled as the engine would handle a new user.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from recsys.bundle import Bundle, data_fingerprint, load_bundle, write_bundle
from recsys.config import Config, ConfigError, from_dict, to_dict
from recsys.data.catalog import Catalog
from recsys.data.schema import Dataset
from recsys.data.split import Split, split_dataset
from recsys.data.vocab import Vocab
from recsys.engine import Engine

logger = logging.getLogger(__name__)

NO_GRAPH_STAGE = "prerank_no_graph"
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
    """Fit every configured stage on its window and write the bundle under ``out`` (a new version)."""
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
    writers = {"catalog": lambda d: save_catalog(catalog, d), "retrieval": retrieval.save}
    metrics = {"retrieval": getattr(retrieval, "valid_metrics", {})}
    if cfg.prerank.enabled:
        from recsys.prerank.stage import fit_on_split

        prerank = fit_on_split(ds, catalog, retrieval, split, cfg.prerank)
        writers["prerank"] = prerank.save
        metrics["prerank"] = prerank.valid_metrics
        if cfg.prerank.ablate_graph:
            # the same pre-ranker without its graph features, for the `no_graph_features` ablation
            no_graph = dataclasses.replace(cfg.prerank, features=tuple(
                n for n in prerank.feature_names if n not in GRAPH_FEATURES))
            ablation = fit_on_split(ds, catalog, retrieval, split, no_graph)
            writers[NO_GRAPH_STAGE] = ablation.save
            metrics[NO_GRAPH_STAGE] = ablation.valid_metrics
    data = data_fingerprint(ds.path) if ds.path is not None else {"sha256": None}
    data["windows"] = windows
    data["split"] = split.stats()
    return write_bundle(out, writers, config=to_dict(cfg), data=data, metrics=metrics)


def load_engine(path: str | Path) -> Engine:
    """Verify a bundle (every checksum before parsing) and build the Engine from its stages."""
    from recsys.retrieval.stage import RetrievalStage

    bundle = load_bundle(path)
    cfg = from_dict(Config, bundle.manifest["config"])
    catalog = load_catalog(bundle.path / "catalog")
    retrieval = RetrievalStage.load(bundle.stage_dir("retrieval"), catalog)
    prerank = None
    if "prerank" in bundle.stages:
        from recsys.prerank.stage import PrerankStage

        prerank = PrerankStage.load(bundle.stage_dir("prerank"), catalog)
    return Engine.from_config(retrieval, cfg.engine, prerank=prerank, name="engine", version=bundle.version,
                              catalog=catalog)


def ablations(engine: Engine, bundle_path: str | Path) -> dict[str, Engine]:
    """The engine with a stage removed or replaced, by system name (for the evaluation report).

    ``retrieval_only`` (no scoring stage), ``no_prerank`` (the heavy ranker on retrieval order),
    ``prerank_only`` / ``no_heavy_ranker`` (no heavy ranker), ``no_graph_features`` (the pre-ranker trained
    without its graph features, when the bundle has it).
    """
    out: dict[str, Engine] = {}
    names = [s.name for s, _ in engine.stages]
    if names:
        out["retrieval_only"] = dataclasses.replace(engine, stages=[], name="retrieval_only")
    if "prerank" in names and "rank" in names:
        out["no_prerank"] = engine.without("prerank", name="no_prerank")
        out["prerank_only"] = engine.without("rank", name="prerank_only")
    bundle = load_bundle(bundle_path)
    if "prerank" in names and NO_GRAPH_STAGE in bundle.stages:
        from recsys.prerank.stage import PrerankStage

        alt = PrerankStage.load(bundle.stage_dir(NO_GRAPH_STAGE), engine.catalog)
        alt.name = "prerank"
        stages = [(alt if s.name == "prerank" else s, c) for s, c in engine.stages]
        out["no_graph_features"] = dataclasses.replace(engine, stages=stages, name="no_graph_features")
    return out
