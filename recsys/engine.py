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

import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Protocol, runtime_checkable

import numpy as np

from recsys.configlib import EngineConfig
from recsys.data.catalog import Catalog
from recsys.deadline import Cancelled, Deadline, DeadlineExceeded  # noqa: F401  (re-exported)
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

    def rank(
        self,
        requests: Requests,
        k: int,
        timings: dict[str, float] | None = None,
        deadline: "Deadline | None" = None,
    ) -> Results:
        """Rank a batch of B requests through the funnel; returns the top ``k`` with per-stage scores.

        ``timings`` (optional) receives milliseconds per stage. With a ``deadline`` (online serving), each
        stage runs within its budget: a scoring stage that would overrun (budget already spent) or does
        overrun (still running at its budget) is dropped and the upstream order is returned, with
        ``"<stage>:deadline"`` / ``"<stage>:timeout"`` in every request's ``degraded`` list; if retrieval itself
        cannot finish within its share of the budget (``Deadline.budget("retrieval")``), nothing can be returned
        and :class:`DeadlineExceeded` is raised (the service answers 504).
        Without a deadline everything runs inline, exactly as the offline evaluator calls it.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        t0 = time.perf_counter()
        requests = self.encode(requests)
        timings = timings if timings is not None else {}
        if not self.stages:
            res = self._run("retrieval", self.retrieval.rank, (requests, k), deadline, fatal=True)
            timings["retrieval"] = (time.perf_counter() - t0) * 1000
            return res
        cold = self.retrieval.is_cold(requests)
        cands = self._run("retrieval", self.retrieval.retrieve, (requests, max(self.retrieve_k, k)), deadline,
                          fatal=True)
        timings["retrieval"] = (time.perf_counter() - t0) * 1000
        stages = {"retrieval": cands.items.copy()}
        last_score = None
        notes: list[str] = []
        for stage, cutoff in self.stages:
            t1 = time.perf_counter()
            cutoff = max(cutoff, k)
            try:
                out = self._run(stage.name, stage.score, (requests, cands), deadline)
            except _Skipped as why:
                notes.append(f"{stage.name}:{why}")
                logger.warning("stage %s dropped (%s); returning the upstream order", stage.name, why)
                timings[stage.name] = (time.perf_counter() - t1) * 1000
                continue
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
            timings[stage.name] = (time.perf_counter() - t1) * 1000
        items = cands.items[:, :k]
        if last_score is not None:
            scores = cands.scores[last_score][:, :k].astype(np.float64)
        else:  # every scoring stage dropped: the retrieval order, scored by the two-tower where it has a score
            scores = cands.scores.get("ann", np.full(cands.items.shape, np.nan))[:, :k].astype(np.float64)
        stage_scores = {name: v[:, :k].astype(np.float64) for name, v in cands.scores.items()}
        degraded = [(["cold_start"] if c else []) + notes for c in cold]
        return Results(items, scores, stage_scores=stage_scores, stages=stages, degraded=degraded)

    def _run(self, name: str, fn, args: tuple, deadline: "Deadline | None", fatal: bool = False):
        """Call ``fn(*args)`` inline, or within the stage's budget on a worker thread when a deadline is set.

        Under a deadline the call is a :class:`recsys.deadline.StageRun`: when its budget passes (or the
        request is cancelled) the engine stops waiting, a call still queued never starts and a running one
        stops at its next :func:`recsys.deadline.checkpoint`; ``deadline.holder`` counts it until it is over.
        """
        if deadline is None:
            return fn(*args)
        budget = deadline.budget(name)
        if budget <= 0 or deadline.cancelled:
            if fatal:
                raise DeadlineExceeded(f"no time left for {name}")
            raise _Skipped("deadline")
        run, future = deadline.submit(_executor(), budget, fn, *args)
        try:
            return future.result(timeout=budget)
        except (concurrent.futures.TimeoutError, Cancelled):
            run.cancel()  # cooperative: the stage stops at its next checkpoint
            future.cancel()  # still queued: never starts
            if fatal:
                raise DeadlineExceeded(f"{name} did not finish within {budget * 1000:.0f} ms") from None
            raise _Skipped("timeout") from None


class _Skipped(Exception):
    """A scoring stage was dropped for the deadline (message: 'deadline' or 'timeout')."""


_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="engine-stage")
        return _EXECUTOR
