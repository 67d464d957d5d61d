"""The library API: train from a pandas DataFrame, load a bundle and rank by external ids, evaluate any ranker.

Shapes: B users asking, K items returned per user. Everything here calls the code the command line runs
(:func:`recsys.data.importers.import_frame`, :func:`recsys.validate.check_config`,
:func:`recsys.training.train_engine` / :func:`~recsys.training.load_engine`,
:func:`offline_eval.evaluator.run_evaluation`), so a result is the same either way.

::

    from recsys import api

    ds = api.dataset(df, user="user", item="song", timestamp="ts", labels={"plays": "count"})
    bundle = api.train(ds, "artifacts/mine", overrides=["retrieval.two_tower.max_epochs=5"])
    engine = api.load(bundle.path)                   # checksums verified; the funnel of `recsys serve`
    top = engine.rank([42, 7], k=10, history=df)     # DataFrame: user_id, rank, item_id, score
    report = api.evaluate(ds, {"mine": MyRanker()}, "reports/mine")

A ranker to evaluate implements the ranking contract (:class:`recsys.types.Ranker`): ``rank(requests, k) ->
Results`` in catalogue indices; one that also has ``fit(train, catalog, schema)`` (as the baselines do) is
fitted first on the interactions before the test window, with the catalogue of the evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from recsys.config import Config, load_config
from recsys.data.schema import Dataset, read_dataset

logger = logging.getLogger(__name__)

__all__ = ["Recommender", "dataset", "config", "train", "load", "evaluate"]


def dataset(frame: pd.DataFrame, **mapping: Any) -> Dataset:
    """The canonical dataset of a DataFrame of interactions; ``mapping``: the fields of
    :class:`recsys.data.importers.ImportMapping` (``user``, ``item``, ``timestamp``, ``labels``, ``rating``,
    ``like_threshold``, features, ...), checked like an import's mapping."""
    from recsys.data.importers import import_frame

    return import_frame(frame, **mapping)


def config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The engine config of a YAML file (None: the built-in defaults) with ``a.b=value`` overrides."""
    return load_config(path, list(overrides))


def _as_dataset(data: Dataset | pd.DataFrame | str | Path, mapping: Mapping[str, Any]) -> Dataset:
    if isinstance(data, Dataset):
        if mapping:
            raise TypeError(f"mapping fields {sorted(mapping)} apply to a DataFrame, not to a Dataset")
        return data
    if isinstance(data, pd.DataFrame):
        return dataset(data, **mapping)
    if mapping:
        raise TypeError(f"mapping fields {sorted(mapping)} apply to a DataFrame, not to a dataset folder")
    return read_dataset(data)


def _resolve(cfg: Config | str | Path | None, overrides: Sequence[str]) -> Config:
    if isinstance(cfg, Config):
        if overrides:
            from recsys.config import apply_overrides, from_dict, to_dict

            return from_dict(Config, apply_overrides(to_dict(cfg), list(overrides)))
        return cfg
    return load_config(cfg, list(overrides))


def train(data: Dataset | pd.DataFrame | str | Path, out: str | Path, cfg: Config | str | Path | None = None,
          overrides: Sequence[str] = (), **mapping: Any):
    """Train the engine on ``data`` (a Dataset, a DataFrame with ``mapping`` fields, or a dataset folder) and
    write a bundle version under ``out``; the config (``cfg``: a Config, a YAML path or None for the defaults,
    plus ``overrides``) is checked against the data first, as ``recsys train`` does. Returns the
    :class:`recsys.bundle.Bundle` (``.path`` is the version folder)."""
    from recsys.training import train_engine
    from recsys.validate import check_config

    ds = _as_dataset(data, mapping)
    return train_engine(ds, check_config(_resolve(cfg, overrides), ds), out)


@dataclasses.dataclass
class Recommender:
    """A loaded bundle's engine, ranking by external ids. ``engine`` is the :class:`recsys.engine.Engine`
    (``engine.rank(requests, k)`` in catalogue indices, as the evaluator and the service call it)."""

    engine: Any
    path: Path

    @property
    def catalog(self):
        return self.engine.catalog

    @property
    def version(self) -> str:
        return self.engine.version

    def rank(self, user_ids: Sequence[Any], k: int = 10, history: pd.DataFrame | None = None,
             at: int | Sequence[int] | None = None, exclude_seen: bool = True) -> pd.DataFrame:
        """The top ``k`` items for each of B users: a DataFrame of ``user_id``, ``rank`` (1-based), ``item_id``,
        ``score``, B x K rows at most (fewer when fewer items are eligible).

        ``history``: the users' past engagements (rows with the catalogue's user, item and timestamp columns,
        e.g. the training log; rows of other users are ignored), or None for users without a history (an
        unknown user without a history gets the popularity fallback). ``at``: the request time(s) in Unix
        seconds (default: one second after the latest history row, or 0). ``exclude_seen``: never return an
        item of the user's history.
        """
        cat = self.catalog
        ids = np.asarray(list(user_ids))
        if ids.ndim != 1 or len(ids) == 0:
            raise ValueError("rank: user_ids must be a non-empty list of external user ids")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"rank: k must be an integer >= 1, got {k!r}")
        past = history if history is not None else pd.DataFrame(
            {cat.user_col: ids[:0], cat.item_col: cat.items.ids[:0], cat.time_col: np.zeros(0, np.int64)})
        missing = [c for c in (cat.user_col, cat.item_col, cat.time_col) if c not in past.columns]
        if missing:
            raise ValueError(f"rank: history lacks column(s) {missing}; columns present: {list(past.columns)}")
        if at is None:
            t = int(past[cat.time_col].max()) + 1 if len(past) else 0
            times = np.full(len(ids), t, dtype=np.int64)
        else:
            times = np.broadcast_to(np.asarray(at, dtype=np.int64), (len(ids),)).copy()
        requests = cat.requests(ids, times, past, exclude_seen=exclude_seen)
        res = self.engine.rank(requests, int(k))
        valid = res.items >= 0
        rows, cols = np.nonzero(valid)
        return pd.DataFrame({
            "user_id": ids[rows], "rank": cols + 1, "item_id": cat.items.ids[res.items[valid]],
            "score": res.scores[valid],
        })


def load(path: str | Path) -> Recommender:
    """Load a bundle (a version folder, or a bundle folder: its ``latest``), every checksum verified."""
    from recsys.training import load_engine

    return Recommender(load_engine(path), Path(path))


def evaluate(data: Dataset | pd.DataFrame | str | Path, rankers: Mapping[str, Any], out: str | Path,
             cfg: Config | str | Path | None = None, overrides: Sequence[str] = (),
             baselines: Sequence[str] | None = None, overwrite: bool = False, **mapping: Any) -> dict:
    """Evaluate ``rankers`` ({name: ranker}) on the test window of ``data``, beside ``baselines`` (default
    ``eval.baselines``; ``[]`` for none), and write the report folder ``out``; returns the ``metrics.json``
    content. A ranker with ``fit(train, catalog, schema)`` is fitted first (see the module docstring)."""
    from offline_eval.evaluator import eval_window, run_evaluation
    from recsys.data.catalog import Catalog
    from recsys.data.split import split_dataset
    from recsys.validate import check_config

    ds = _as_dataset(data, mapping)
    cfg = check_config(_resolve(cfg, overrides), ds, stages=False, baselines=baselines)
    split = split_dataset(ds, cfg.split)
    before = split.before(eval_window(split))
    catalog = Catalog.from_dataset(ds, train=before)
    for name, ranker in rankers.items():
        if not callable(getattr(ranker, "rank", None)):
            raise TypeError(f"ranker {name!r}: {type(ranker).__name__} has no rank(requests, k) method")
        if callable(getattr(ranker, "fit", None)):
            ranker.fit(before, catalog, ds.schema)
    return run_evaluation(ds, cfg, out, systems=dict(rankers), baselines=baselines, catalog=catalog, split=split,
                          overwrite=overwrite)
