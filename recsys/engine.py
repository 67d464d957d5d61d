"""The staged funnel: one code path from a batch of requests to ranked items with per-stage scores.

``Engine.rank(requests, k)`` is what the offline evaluator and the HTTP service both call:

    retrieval.retrieve(requests, retrieve_k)        -> Candidates (B, C0)   C0 = retrieve_k
    for each scoring stage s with cut-off k_s:       -> scores (B, C_{s-1}) -> keep the top k_s by score
    final list                                       -> top k of the last stage

With only retrieval configured, the final list is the retrieval stage's own top-k (``RetrievalStage.rank``).
Every result carries the candidate list each stage passed on (``Results.stages``, for funnel recall) and the
score each stage or task gave the returned items (``Results.stage_scores``).

A scoring stage implements :class:`ScoringStage`: ``score(requests, candidates) -> {name: (B, C)}`` with a
``"score"`` entry used for ordering (higher is better; NaN/-inf never kept) and optional extra entries
(e.g. per-task probabilities) that are carried into the result.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Protocol, runtime_checkable

import numpy as np

from recsys.config import EngineConfig
from recsys.data.catalog import Catalog
from recsys.retrieval.sources import Candidates
from recsys.retrieval.stage import RetrievalStage
from recsys.types import Requests, Results

logger = logging.getLogger(__name__)


@runtime_checkable
class ScoringStage(Protocol):
    name: str

    def score(self, requests: Requests, candidates: Candidates) -> dict[str, np.ndarray]: ...


def select_columns(cands: Candidates, cols: np.ndarray) -> Candidates:
    """The candidates at column positions ``cols`` (B, C') of each row (``-1`` -> padding)."""
    valid = cols >= 0
    safe = np.where(valid, cols, 0)
    items = np.where(valid, np.take_along_axis(cands.items, safe, axis=1), -1)
    source = np.where(valid, np.take_along_axis(cands.source, safe, axis=1), -1).astype(cands.source.dtype)
    scores = {
        k: np.where(valid, np.take_along_axis(v, safe, axis=1), np.nan).astype(v.dtype, copy=False)
        for k, v in cands.scores.items()
    }
    return Candidates(items, source, scores, list(cands.names))


def top_columns(score: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Column positions (B, k) of the k best scores per row, best first; padding and NaN never kept (-1).

    Ties keep the upstream order (stable sort on the column position).
    """
    s = np.where((items >= 0) & np.isfinite(score), score, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(s, order, axis=1)
    order = np.where(np.isneginf(picked), -1, order)
    if order.shape[1] < k:
        order = np.pad(order, ((0, 0), (0, k - order.shape[1])), constant_values=-1)
    return order


@dataclasses.dataclass
class Engine:
    """The funnel built from built stages: retrieval, then zero or more scoring stages with cut-offs.

    ``stages`` is a list of (stage, cut-off) pairs applied in order, e.g.
    ``[(prerank, 100), (heavy_ranker, k)]``; the last cut-off is raised to the requested k if smaller.
    """

    retrieval: RetrievalStage
    stages: list[tuple[ScoringStage, int]] = dataclasses.field(default_factory=list)
    retrieve_k: int = 1000
    name: str = "engine"
    version: str = ""
    catalog: Catalog | None = None

    @classmethod
    def from_config(cls, retrieval, cfg: EngineConfig, prerank=None, ranker=None, name="engine", version="",
                    catalog: Catalog | None = None) -> "Engine":
        stages: list[tuple[ScoringStage, int]] = []
        if prerank is not None:
            stages.append((prerank, cfg.prerank_k))
        if ranker is not None:
            stages.append((ranker, cfg.k))
        return cls(retrieval, stages, cfg.retrieve_k, name, version, catalog)

    def encode(self, requests: Requests) -> Requests:
        """Re-encode the request's users in this engine's user vocabulary (from their external ids), so a
        caller's catalogue (e.g. the evaluator's) may differ from the bundle's in its users."""
        if self.catalog is None or requests.user_ids is None:
            return requests
        return dataclasses.replace(requests, users=self.catalog.users.encode(requests.user_ids))

    def without(self, stage_name: str, name: str | None = None) -> "Engine":
        """The same engine with one scoring stage removed (for ablations)."""
        kept = [(s, c) for s, c in self.stages if s.name != stage_name]
        if len(kept) == len(self.stages):
            raise ValueError(f"engine has no stage {stage_name!r}; stages: {[s.name for s, _ in self.stages]}")
        return dataclasses.replace(self, stages=kept, name=name or f"no_{stage_name}")

    def rank(self, requests: Requests, k: int, timings: dict[str, float] | None = None) -> Results:
        """Rank a batch of B requests through the funnel; returns the top ``k`` with per-stage scores."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        t0 = time.perf_counter()
        requests = self.encode(requests)
        if not self.stages:
            res = self.retrieval.rank(requests, k)
            if timings is not None:
                timings["retrieval"] = (time.perf_counter() - t0) * 1000
            return res
        cold = self.retrieval.is_cold(requests)
        cands = self.retrieval.retrieve(requests, max(self.retrieve_k, k))
        if timings is not None:
            timings["retrieval"] = (time.perf_counter() - t0) * 1000
        stages = {"retrieval": cands.items.copy()}
        last_score = None
        for stage, cutoff in self.stages:
            t1 = time.perf_counter()
            cutoff = max(cutoff, k)
            out = stage.score(requests, cands)
            if "score" not in out:
                raise RuntimeError(f"stage {stage.name!r} returned no 'score' entry")  # a stage contract bug
            scored = dict(cands.scores)
            scored[stage.name] = np.asarray(out["score"], dtype=np.float64)
            for key, val in out.items():
                if key != "score":
                    scored[key] = np.asarray(val, dtype=np.float64)
            cands = dataclasses.replace(cands, scores=scored)
            cols = top_columns(scored[stage.name], cands.items, cutoff)
            cands = select_columns(cands, cols)
            stages[stage.name] = cands.items.copy()
            last_score = stage.name
            if timings is not None:
                timings[stage.name] = (time.perf_counter() - t1) * 1000
        items = cands.items[:, :k]
        scores = cands.scores[last_score][:, :k].astype(np.float64)
        stage_scores = {name: v[:, :k].astype(np.float64) for name, v in cands.scores.items()}
        degraded = [["cold_start"] if c else [] for c in cold]
        return Results(items, scores, stage_scores=stage_scores, stages=stages, degraded=degraded)
