"""The whole configuration checked against a dataset before any training or evaluation starts.

:func:`check_config` is what ``recsys train`` and ``recsys evaluate`` call right after reading the config and
the dataset: every mismatch that would otherwise surface minutes later, inside a stage's ``fit``, is a one-line
:class:`~recsys.configlib.ConfigError` (or :class:`~recsys.data.schema.DatasetError`) naming the key and what
the dataset offers, raised within seconds. What is checked:

* **split**: the protocol against the timestamps (a temporal protocol on an untimed log, constant or
  concentrated timestamps: see :func:`recsys.data.split.split_dataset`), and that every window the stages
  train on and the test window have engagements;
* **labels**: ``eval.positive_label`` is a binary label; ``eval.gains``, ``prerank.gains``, ``rank.tasks`` and
  the value model's tasks name labels the dataset has;
* **impressions**: ``rank.examples`` ``impressions``/``both`` need a dataset with impressions;
* **baselines**: every name of ``eval.baselines`` (or the ``--systems`` baselines) is known.

Where the configured label names are absent, sensible values are **derived** from the labels that exist (each
derivation is logged, and the returned config, which the bundle records, holds the derived values):

* gains (``eval.gains``, ``prerank.gains``): :func:`derive_gains`, weight 1 for the positive label and for
  every other binary label that is positive only on engaged rows (``like`` on a clicked item), so a liked
  click counts 2 as in ``configs/default.yaml`` and a liked rating as in ``configs/ratings.yaml``;
* ``rank.tasks``: every binary label; ``rank.value`` task names that are not tasks: cleared (the value model
  then takes the first and second task, or every task with weight 1);
* ``rank.exposure`` on a dataset without impressions: off (the exposure head learns from shown-not-engaged
  rows, which such a dataset does not have).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

from recsys.config import Config, ConfigError
from recsys.data.schema import Dataset, DatasetError, Kind

logger = logging.getLogger(__name__)

__all__ = ["check_config", "derive_gains"]

#: engagements the windows of the engine's stages need (see recsys.windows.train_windows); other stages: 1
_NEEDS = {"retrieval": 2, "test": 1}


def derive_gains(ds: Dataset) -> dict[str, float]:
    """Gains from the dataset's labels: ``{positive_label: 1}`` plus weight 1 for every other binary label that is
    positive somewhere and only on rows where the positive label is (a stronger engagement, e.g. ``like``)."""
    inter, pos = ds.interactions, ds.schema.positive_label
    engaged = inter[pos].to_numpy() > 0
    gains = {pos: 1.0}
    for name in _binary_labels(ds):
        if name != pos:
            on = inter[name].to_numpy() > 0
            if on.any() and not (on & ~engaged).any():
                gains[name] = 1.0
    return gains


def check_config(cfg: Config, ds: Dataset, stages: bool = True, baselines: Sequence[str] | None = None) -> Config:
    """Check ``cfg`` against ``ds`` (see the module docstring) and return it with the derived values.

    ``stages``: also check the sections of the engine's stages (``recsys train``; ``recsys evaluate`` of a
    bundle); False checks the split and the evaluation only. ``baselines``: the baseline names to evaluate
    (default ``cfg.eval.baselines``). Raises ConfigError / DatasetError with a one-line message.
    """
    cfg = _check_split(cfg, ds, stages)
    cfg = _check_eval(cfg, ds, baselines)
    if stages:
        cfg = _check_prerank(cfg, ds)
        cfg = _check_rank(cfg, ds)
    return cfg


# --------------------------------------------------------------------------------------------------------


def _binary_labels(ds: Dataset) -> list[str]:
    cols = ds.schema.tables["interactions"].columns
    return [c for c in ds.schema.labels if cols[c].kind is Kind.BINARY]


def _replace(cfg: Config, section: str, **changes) -> Config:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


def _check_split(cfg: Config, ds: Dataset, stages: bool) -> Config:
    from recsys.data.split import resolve_method, split_dataset

    cfg = dataclasses.replace(cfg, split=resolve_method(ds, cfg.split))
    split = split_dataset(ds, cfg.split)  # refuses empty windows, naming the cause
    names = split.names
    if stages and len(names) < 3:
        raise ConfigError(f"split.windows: the engine needs at least 3 windows (train, ..., test), got {names}")
    roles = [("test", names[-1])]
    if stages:
        from recsys.windows import train_windows

        roles.append(("retrieval", names[0]))
        roles += [(stage, w) for stage, ws in train_windows(split, cfg.engine).items() for w in ws]
    pos = ds.schema.positive_label
    for role, window in roles:
        n = int((split[window][pos].to_numpy() > 0).sum())
        need = _NEEDS.get(role, 1)
        if n < need:
            raise DatasetError(
                f"split window {window!r} ({role}) has {n} engagement(s) ({pos!r} > 0) of {len(split[window]):,} "
                f"rows; it needs at least {need}: change split.windows (or split.method)"
            )
    return cfg


def _gains(key: str, gains: dict[str, float], ds: Dataset) -> dict[str, float]:
    labels = ds.schema.labels
    missing = [g for g in gains if g not in labels]
    if not missing:
        return gains
    derived = derive_gains(ds)
    logger.warning("%s: %s not label(s) of dataset %r (labels: %s); using gains %s derived from its labels",
                   key, missing, ds.schema.name, labels, derived)
    return derived


def _check_eval(cfg: Config, ds: Dataset, baselines: Sequence[str] | None) -> Config:
    ev = cfg.eval
    binary = _binary_labels(ds)
    if ev.positive_label is not None and ev.positive_label not in binary:
        raise ConfigError(f"eval.positive_label: {ev.positive_label!r} is not a binary label of dataset "
                          f"{ds.schema.name!r}; binary labels: {binary}")
    names = list(ev.baselines if baselines is None else baselines)
    if names:
        from offline_eval.baselines import BASELINES

        unknown = [n for n in names if n not in BASELINES]
        if unknown:
            raise ConfigError(f"eval.baselines: unknown baseline(s) {unknown}; known: {', '.join(BASELINES)}")
    gains = _gains("eval.gains", dict(ev.gains), ds) if ev.gains else {}
    return _replace(cfg, "eval", gains=gains) if gains != dict(ev.gains) else cfg


def _in_funnel(cfg: Config, type_name: str) -> bool:
    return any(t == type_name for _, t, _ in cfg.engine.stages)


def _check_prerank(cfg: Config, ds: Dataset) -> Config:
    if not _in_funnel(cfg, "prerank") or not cfg.prerank.gains:
        return cfg
    gains = _gains("prerank.gains", dict(cfg.prerank.gains), ds)
    return _replace(cfg, "prerank", gains=gains) if gains != dict(cfg.prerank.gains) else cfg


def _check_rank(cfg: Config, ds: Dataset) -> Config:
    from recsys.rank.config import Examples

    rank = cfg.rank
    if not _in_funnel(cfg, "rank"):
        return cfg
    name, binary = ds.schema.name, _binary_labels(ds)
    if not binary:
        raise DatasetError(f"rank.tasks: dataset {name!r} has no binary label to learn; labels: {ds.schema.labels}")
    changes: dict = {}
    tasks = list(rank.tasks)
    if any(t not in binary for t in tasks):
        logger.warning("rank.tasks: %s not binary label(s) of dataset %r; using every binary label %s",
                       [t for t in tasks if t not in binary], name, binary)
        tasks, changes["tasks"] = binary, ()
    tasks = tasks or binary
    if not ds.schema.has_impressions:
        if rank.examples in (Examples.IMPRESSIONS, Examples.BOTH):
            raise ConfigError(f"rank.examples: {rank.examples.value!r} needs a dataset with impressions, and "
                              f"{name!r} has none; use 'funnel' or 'auto'")
        if rank.exposure:
            logger.warning("rank.exposure: dataset %r has no impressions (shown-not-engaged rows) to learn exposure "
                           "from; the exposure head is off", name)
            changes["exposure"] = False
    value = rank.value
    bad = [k for k in ("click_task", "like_task") if getattr(value, k) and getattr(value, k) not in tasks]
    weights = {t: w for t, w in value.weights.items() if t in tasks}
    if bad or weights != dict(value.weights):
        logger.warning("rank.value: %s name(s) no task of %s; using the value model's defaults for them",
                       [getattr(value, k) for k in bad] + [t for t in value.weights if t not in tasks], tasks)
        changes["value"] = dataclasses.replace(value, weights=weights, **{k: "" for k in bad})
    if rank.train.task_weights and len(rank.train.task_weights) != len(tasks):
        raise ConfigError(f"rank.train.task_weights: need one weight per task {tasks}, got "
                          f"{list(rank.train.task_weights)}")
    return _replace(cfg, "rank", **changes) if changes else cfg
