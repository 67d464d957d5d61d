"""The stage contract: one protocol per role, one fit context, one registry.

Shapes: B requests, C candidates per request.

Every stage of the funnel follows the same contract, in the spirit of scikit-learn (constructors store, ``fit``
works) and implicit (one small base contract and one shared test suite, ``tests/contracts.py``):

* ``__init__(cfg)`` stores its config section and does nothing else;
* ``fit(ctx: FitContext) -> self`` learns from one :class:`FitContext`: the dataset, the catalogue, the window it
  trains on, the history before it, the point-in-time feature contexts of that window, and the **upstream
  engine exactly as it will serve the stage** (the retrieval stage and every scoring stage before it, with the
  funnel's cut-offs). A scoring stage takes its training candidates from ``ctx.upstream.candidates(requests)``,
  so the pool it learns from cannot differ from the pool it is served. With several as-of cut points
  (``ctx.cuts``) it builds rows at each, each from that cut's own upstream, history and features;
* a candidate stage (retrieval) answers ``retrieve(requests, k) -> Candidates`` (B, k); a scoring stage answers
  ``score(requests, candidates) -> {"score": (B, C), ...}`` (higher is better; ``"score"`` orders the
  candidates, other entries such as per-task probabilities are carried into the result);
* ``save(folder)`` and the classmethod ``load(folder, catalog)`` (no pickle: JSON, ``.npy``, safetensors,
  LightGBM text, FAISS).

The funnel is ``engine.funnel`` in the config, the stages in order with their cut-offs
(``[{stage: retrieval, k: 1000}, {stage: prerank, k: 100}, {stage: rank, k: 10}]``), the first being the
candidate stage. A stage's ``type`` (its :data:`STAGES` entry) defaults to its name; its config is the
top-level section of its type (``retrieval``, ``prerank``, ``rank``) or, for a type registered from outside,
``stage_params.<name>`` parsed by the type's config class. Adding a scoring stage is therefore: its module,
one :func:`register_stage` line, and the config.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # type names only: the engine imports the stages, never the other way round at run time
    from recsys.data.catalog import Catalog
    from recsys.data.schema import Dataset
    from recsys.data.split import Split
    from recsys.engine import Engine
    from recsys.features import FeatureContext
    from recsys.retrieval.sources import Candidates
    from recsys.types import Requests


@dataclasses.dataclass(frozen=True)
class FitContext:
    """Everything a stage learns from, built by :mod:`recsys.training` (one per stage and system).

    ds, catalog   the dataset and the catalogue the stage serves in (its item vocabulary; users of the
                  retrieval window)
    split         the time split; ``window`` names the stage's own training window in it
    history       the interactions before ``window`` (engagement histories, seen-item exclusion)
    valid         the window after ``window`` (the candidate stage's early stopping; None for scoring stages)
    upstream      the engine that will hand this stage its candidates, exactly as served: same stages, same
                  cut-offs, same models; its feature contexts are as of ``window``. None for the candidate stage.
    features      ``features(stage_cfg) -> FeatureContext``: the point-in-time feature context as of the start of
                  ``window`` for a stage config's graph / feature parameters (shared between stages that agree)
    seed          the run's seed (each stage's own ``seed`` keys are offset by it, see ``recsys.training``)
    train         the training events when they are not one window (the two-tower's refit); None: ``window``
    k             the cut-off the stage keeps in the funnel (what its ranking quality is judged at)
    earlier       the stage's earlier as-of cut points (``engine.funnel[i].windows``), oldest first: one fit
                  context each, with its own window, history, catalogue, point-in-time features and an upstream
                  as of that window (trained on earlier windows only). Empty: one cut point, this one.
    """

    ds: "Dataset"
    catalog: "Catalog"
    split: "Split"
    window: str
    history: pd.DataFrame
    upstream: "Engine | None" = None
    features: Callable[[Any], "FeatureContext"] | None = None
    valid: pd.DataFrame | None = None
    seed: int = 0
    train: pd.DataFrame | None = None
    k: int | None = None
    earlier: tuple["FitContext", ...] = ()

    @property
    def cuts(self) -> tuple["FitContext", ...]:
        """Every cut point the stage learns from, oldest first, this one (the latest) last. A scoring stage
        builds its training rows at each (same protocol, its own upstream and features) and learns from all."""
        return (*self.earlier, dataclasses.replace(self, earlier=()))

    @property
    def window_df(self) -> pd.DataFrame:
        """The stage's training events: ``train`` when given (a refit on several windows), else the window."""
        return self.split[self.window] if self.train is None else self.train

    def feature_context(self, stage_cfg) -> "FeatureContext":
        if self.features is None:
            raise ValueError(f"FitContext for window {self.window!r} has no feature contexts (features=None)")
        return self.features(stage_cfg)


@runtime_checkable
class CandidateStage(Protocol):
    """The first stage: narrows the catalogue to ``k`` candidates per request."""

    name: str

    def fit(self, ctx: FitContext) -> "CandidateStage": ...

    def retrieve(self, requests: "Requests", k: int) -> "Candidates": ...

    def save(self, folder) -> None: ...


@runtime_checkable
class ScoringStage(Protocol):
    """A stage after retrieval: scores a (B, C) candidate block; the engine keeps its top cut-off."""

    name: str

    def fit(self, ctx: FitContext) -> "ScoringStage": ...

    def score(self, requests: "Requests", candidates: "Candidates") -> dict[str, np.ndarray]: ...

    def save(self, folder) -> None: ...


@dataclasses.dataclass(frozen=True)
class StageType:
    """A registry entry: the stage class, how to import it (lazily: torch and LightGBM load only when used),
    the candidate/scoring role and the top-level config section holding its config (None: ``stage_params``)."""

    name: str
    path: str  # "module:Class"
    candidate: bool = False
    section: str | None = None
    config_path: str | None = None  # "module:ConfigClass" for types configured through stage_params

    def load_class(self) -> type:
        return _import(self.path)

    def config_class(self) -> type | None:
        return _import(self.config_path) if self.config_path else None


def _import(path: str):
    import importlib

    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


STAGES: dict[str, StageType] = {}


def register_stage(name: str, path: str, *, candidate: bool = False, section: str | None = None,
                   config: str | None = None) -> StageType:
    """Add a stage type to :data:`STAGES` (the one line a new stage needs). ``path`` and ``config`` are
    ``"module:Class"`` strings, imported when the stage is first built or loaded."""
    if name in STAGES and STAGES[name].path != path:
        raise ValueError(f"stage type {name!r} is already registered as {STAGES[name].path}")
    STAGES[name] = StageType(name, path, candidate, section, config)
    return STAGES[name]


def stage_type(name: str) -> StageType:
    if name not in STAGES:
        raise ValueError(f"unknown stage type {name!r}; registered: {sorted(STAGES)}")
    return STAGES[name]


register_stage("retrieval", "recsys.retrieval.stage:RetrievalStage", candidate=True, section="retrieval")
register_stage("prerank", "recsys.prerank.stage:PrerankStage", section="prerank")
register_stage("rank", "recsys.rank.stage:RankStage", section="rank")


__all__ = ["CandidateStage", "FitContext", "STAGES", "ScoringStage", "StageType", "register_stage", "stage_type"]
