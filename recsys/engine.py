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

import numpy as np

from recsys.data.catalog import Catalog
from recsys.deadline import Cancelled, Deadline, DeadlineExceeded  # noqa: F401  (re-exported)
from recsys.retrieval.sources import Candidates, select_columns, top_columns  # noqa: F401  (re-exported)
from recsys.retrieval.stage import RetrievalStage
from recsys.stages.base import ScoringStage
from recsys.types import Requests, Results

logger = logging.getLogger(__name__)


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
    # {request digest: Candidates} of candidates(): set by training, where several stages learn from one
    # upstream on one window (the heavy ranker's architecture variants); None: no memo (serving, evaluation)
    memo: dict | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def output_k(self) -> int:
        """Candidates per request this engine hands on: the last stage's cut-off (retrieve_k without one)."""
        return self.stages[-1][1] if self.stages else self.retrieve_k

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s, _ in self.stages]

    def upstream_of(self, index: int) -> "Engine":
        """The engine that feeds scoring stage ``index``: retrieval and the stages before it, same cut-offs."""
        return dataclasses.replace(self, stages=list(self.stages[:index]), name=f"{self.name}[:{index}]")

    def encode(self, requests: Requests) -> Requests:
        """Re-encode the request's users in this engine's user vocabulary (from their external ids), so a
        caller's catalogue (e.g. the evaluator's) may differ from the bundle's in its users."""
        if self.catalog is None or requests.user_ids is None:
            return requests
        return dataclasses.replace(requests, users=self.catalog.users.encode(requests.user_ids))

    def without(self, stage_name: str, name: str | None = None) -> "Engine":
        """The same engine with one scoring stage removed (for ablations). The removed stage's cut-off passes
        to the stage before it (or to retrieval), so the next stage receives as many candidates as before."""
        names = self.stage_names
        if stage_name not in names:
            raise ValueError(f"engine has no stage {stage_name!r}; stages: {names}")
        i = names.index(stage_name)
        cut = self.stages[i][1]
        stages = [(s, c) for j, (s, c) in enumerate(self.stages) if j != i]
        retrieve_k = self.retrieve_k
        if i == 0:
            retrieve_k = cut
        else:
            stages[i - 1] = (stages[i - 1][0], cut)
        return dataclasses.replace(self, stages=stages, retrieve_k=retrieve_k, name=name or f"no_{stage_name}")

    def candidates(self, requests: Requests) -> Candidates:
        """The (B, output_k) candidates this engine hands the next stage: retrieve ``retrieve_k``, then each
        scoring stage scores and keeps its cut-off. ``scores`` holds every source's and stage's score (a stage's
        under its name, plus its extra outputs), as :meth:`rank` passes them on. This is what a downstream stage
        trains on (:class:`recsys.stages.base.FitContext`)."""
        requests = self.encode(requests)
        key = _digest(requests) if self.memo is not None else None
        if key is not None and key in self.memo:
            return self.memo[key]
        cands = self.retrieval.retrieve(requests, self.retrieve_k)
        for stage, cutoff in self.stages:
            cands = self._keep(stage, stage.score(requests, cands), cands, cutoff)
        if key is not None:
            self.memo[key] = cands
        return cands

    @staticmethod
    def _keep(stage, out: dict, cands: Candidates, cutoff: int) -> Candidates:
        """``cands`` with ``stage``'s outputs added to its scores, cut to the ``cutoff`` best by ``out["score"]``."""
        if "score" not in out:
            raise RuntimeError(f"stage {stage.name!r} returned no 'score' entry")  # a stage contract bug
        scored = dict(cands.scores)
        scored[stage.name] = np.asarray(out["score"], dtype=np.float64)
        for key, val in out.items():
            if key != "score":
                scored[key] = np.asarray(val, dtype=np.float64)
        cands = dataclasses.replace(cands, scores=scored)
        return select_columns(cands, top_columns(scored[stage.name], cands.items, cutoff))

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
        overrun (still running at its budget) is dropped and the upstream order is kept, cut to the dropped
        stage's cut-off (so the next stage receives as many candidates as it was trained on), with
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
                logger.warning("stage %s dropped (%s); its top %d by the upstream order go on", stage.name, why,
                               cutoff)
                # the next stage still gets the cut-off it was trained on, not all of the upstream's candidates
                # (a heavy ranker trained on 100 pre-ranked candidates would otherwise score all 1000 retrieved)
                cols = np.arange(min(cutoff, cands.items.shape[1]), dtype=np.int64)
                cands = select_columns(cands, np.broadcast_to(cols, (cands.items.shape[0], len(cols))))
                timings[stage.name] = (time.perf_counter() - t1) * 1000
                continue
            cands = self._keep(stage, out, cands, cutoff)
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


def _digest(requests: Requests) -> str:
    """A digest of everything :meth:`Engine.candidates` reads from a request batch."""
    import hashlib

    h = hashlib.sha256()
    parts = [requests.users, requests.timestamps, requests.history.indptr, requests.history.values]
    if requests.exclude is not None:
        parts += [requests.exclude.indptr, requests.exclude.values]
    for name in sorted(requests.context):
        parts.append(np.asarray(requests.context[name]).astype(str))
        h.update(name.encode())
    for a in parts:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


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
