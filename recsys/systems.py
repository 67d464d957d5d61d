"""The systems an evaluation compares, declared in one table.

A system is the configured funnel (``engine.funnel``) with stages removed, stages retrained with another
config (a *variant*), or a transform of the built engine that needs no training (a *derivation*). Training
(:func:`recsys.training.train_engine`) walks this table: every stage of every system is trained on the
candidates that system's own upstream serves it (cascade-consistent), and stages that come out identical
(same config, same upstream) are trained once and shared. The bundle's manifest records each system's
stage folders, so loading a system is a loop (:func:`recsys.training.load_system`).

Removing a stage passes its cut-off to the stage before it (:meth:`recsys.engine.Engine.without`): in
``no_prerank`` retrieval hands the heavy ranker ``prerank_k`` candidates, the pool size it is trained and
served on, so the system isolates the pre-ranker's choice of candidates at equal heavy-ranker cost.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

GRAPH_FEATURES = ("item_pagerank", "ppr", "co_engagement", "src_graph")
COLLAB_FEATURES = ("collab_score", "src_collab")
ALL_SCORING = "*"


@dataclasses.dataclass(frozen=True)
class System:
    """One row of :data:`SYSTEMS`.

    drop       stage types removed from the funnel (``"*"``: every scoring stage)
    variants   ``(stage type, variant name)``: that stage retrained with :data:`VARIANTS` ``[variant]``
    derive     a :data:`DERIVATIONS` entry applied to the built engine (no training)
    needs      stage types the funnel must have for the system to mean something
    """

    name: str
    doc: str
    drop: tuple[str, ...] = ()
    variants: tuple[tuple[str, str], ...] = ()
    derive: str | None = None
    needs: tuple[str, ...] = ()


SYSTEMS: tuple[System, ...] = (
    System("engine", "the full funnel as configured"),
    System("retrieval_only", "the candidate stage alone: the two-tower's own ranking", drop=(ALL_SCORING,)),
    System("prerank_only", "no heavy ranker: the pre-ranker's top k", drop=("rank",), needs=("prerank", "rank")),
    System("no_prerank", "no pre-ranker: retrieval hands prerank_k candidates to a heavy ranker trained that way",
           drop=("prerank",), needs=("prerank", "rank")),
    System("no_graph_features", "pre-ranker and heavy ranker trained without graph features",
           variants=(("prerank", "no_graph"), ("rank", "no_graph")), needs=("prerank",)),
    System("prerank_only_no_graph", "the pre-ranker without graph features, no heavy ranker",
           drop=("rank",), variants=(("prerank", "no_graph"),), needs=("prerank", "rank")),
    System("no_collab_features", "pre-ranker and heavy ranker trained without the item-item (collab) features",
           variants=(("prerank", "no_collab"), ("rank", "no_collab")), needs=("prerank",)),
    System("shared_bottom", "the heavy ranker with a shared-bottom multi-task core",
           variants=(("rank", "shared_bottom"),), needs=("rank",)),
    System("single_task", "the heavy ranker with one tower per task and no sharing",
           variants=(("rank", "single_task"),), needs=("rank",)),
    System("no_exposure", "the heavy ranker valuing candidates without the exposure factor (e = 0)",
           derive="no_exposure", needs=("rank",)),
)
BY_NAME: dict[str, System] = {s.name: s for s in SYSTEMS}


def _without_features(cfg, base, names: tuple[str, ...]):
    """``cfg`` with its feature list set to the base stage's features minus ``names`` (None: nothing removed)."""
    kept = tuple(n for n in base.feature_names if n not in names)
    if kept == tuple(base.feature_names):
        return None
    return dataclasses.replace(cfg, features=kept)


def _arch(arch: str):
    def change(cfg, base):
        return None if cfg.arch == arch else dataclasses.replace(cfg, arch=arch)
    return change


# variant name -> (stage config section, the fitted base stage) -> changed config, or None when the variant
# would equal the base (the system is then identical to the engine and is not built)
VARIANTS: dict[str, Callable[[Any, Any], Any]] = {
    "no_graph": lambda cfg, base: _without_features(cfg, base, GRAPH_FEATURES),
    "no_collab": lambda cfg, base: _without_features(cfg, base, COLLAB_FEATURES),
    "shared_bottom": _arch("shared_bottom"),
    "single_task": _arch("single_task"),
    "mmoe": _arch("mmoe"),
}


def _no_exposure(engine):
    """The engine whose heavy ranker values candidates without the exposure factor (None: nothing changes)."""
    import dataclasses as dc

    for i, (stage, cut) in enumerate(engine.stages):
        if getattr(stage, "exposure_index", None) is not None and stage.cfg.value.exposure_power != 0:
            alt = stage.with_value(dc.replace(stage.cfg.value, exposure_power=0.0))
            stages = list(engine.stages)
            stages[i] = (alt, cut)
            return dc.replace(engine, stages=stages)
    return None


DERIVATIONS: dict[str, Callable[[Any], Any]] = {"no_exposure": _no_exposure}


def selected(names: tuple[str, ...] | list[str]) -> list[System]:
    """The systems named (empty: all), in table order; ``engine`` always first. Unknown names are errors."""
    from recsys.configlib import ConfigError

    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ConfigError(f"systems: unknown system(s) {unknown}; known: {[s.name for s in SYSTEMS]}")
    want = set(names) | {"engine"} if names else set(BY_NAME)
    return [s for s in SYSTEMS if s.name in want]


def applicable(system: System, types: list[str]) -> bool:
    """Whether ``system`` means something for a funnel of these stage types."""
    return all(t in types for t in system.needs) and not (system.drop == (ALL_SCORING,) and len(types) < 2)


__all__ = ["ALL_SCORING", "BY_NAME", "COLLAB_FEATURES", "DERIVATIONS", "GRAPH_FEATURES", "SYSTEMS", "System", "VARIANTS", "applicable",
           "selected"]
