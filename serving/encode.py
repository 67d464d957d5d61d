"""JSON requests -> :class:`~recsys.types.Requests` in catalogue indices, and :class:`~recsys.types.Results` ->
JSON responses. Shapes: B requests in a batch, K items per response, H history events of a request.

External ids are matched exactly as typed (an int id never matches a string id); unknown ids map to the
vocabulary's OOV index: an unknown user is a new user, unknown history / exclusion items are dropped (and
counted). The service is stateless: a request's history is what the caller sent.

History times, as offline: when every event of a history has a timestamp the history is sorted by time
(stable, oldest first), so recency reads the latest engagement whatever order the caller used. Otherwise the
history keeps the caller's order (oldest first, as documented) and an event without a timestamp has an unknown
time (:data:`recsys.types.MISSING_TIME`): time-derived features take the missing-value path the models learned
(``user_recency_days`` is NaN when the last event has no time), never the request time (a recency of 0 that
offline data never produces).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Sequence

import numpy as np

from recsys.data.catalog import Catalog
from recsys.data.vocab import Vocab
from recsys.types import MISSING_TIME, Ragged, Requests, Results

logger = logging.getLogger(__name__)


def id_array(ids: Sequence[int | str]) -> np.ndarray:
    """(N,) ids as int64 when all are ints, else an object array (mixed types keep their own type)."""
    if all(type(x) is int for x in ids):
        return np.asarray(ids, dtype=np.int64) if len(ids) else np.zeros(0, dtype=np.int64)
    out = np.empty(len(ids), dtype=object)
    out[:] = list(ids)
    return out


def encode_ids(vocab: Vocab, ids: Sequence[int | str]) -> np.ndarray:
    """(N,) external ids -> (N,) int64 vocabulary indices (unknown: ``vocab.oov``)."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.int64)
    return vocab.encode(id_array(ids))


def context_column(values: list[Any]) -> np.ndarray:
    """(B,) values of one context column: int64 / float64 when uniform, else an object array (None: missing)."""
    types = {type(v) for v in values}
    if types == {int}:
        return np.asarray(values, dtype=np.int64)
    if types <= {int, float} and float in types:
        return np.asarray(values, dtype=np.float64)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


@dataclasses.dataclass
class Encoded:
    """A batch of B requests in catalogue indices, with what was dropped on the way.

    known_user       (B,) bool  the user id is in the model's user vocabulary
    ignored_history  (B,) int64 history events whose item is unknown (dropped)
    ignored_exclude  (B,) int64 excluded ids that are unknown (dropped)
    """

    requests: Requests
    known_user: np.ndarray
    ignored_history: np.ndarray
    ignored_exclude: np.ndarray


def _events(history: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """(item ids, times) of one request's history: time-sorted when every event has a timestamp, else in the
    given order with :data:`MISSING_TIME` for the events without one."""
    ids = [h if isinstance(h, (int, str)) else h.item_id for h in history]
    times = [MISSING_TIME if isinstance(h, (int, str)) or h.timestamp is None else h.timestamp for h in history]
    if MISSING_TIME not in times:
        order = sorted(range(len(ids)), key=times.__getitem__)  # stable: ties keep the caller's order
        ids, times = [ids[i] for i in order], [times[i] for i in order]
    return ids, times


def build_requests(catalog: Catalog, reqs: Sequence[Any], now: int) -> Encoded:
    """Encode B validated ``RankRequest`` models (see :mod:`serving.schemas`) against ``catalog``.

    All history and exclusion ids of the batch are encoded with one vocabulary look-up each.
    """
    b = len(reqs)
    ts = np.array([r.timestamp if r.timestamp is not None else now for r in reqs], dtype=np.int64)
    user_ids = id_array([r.user_id for r in reqs])
    users = catalog.users.encode(user_ids)

    h_ids: list[Any] = []
    h_times: list[int] = []
    h_len = np.zeros(b, dtype=np.int64)
    for i, r in enumerate(reqs):
        ids, times = _events(r.history)
        h_ids += ids
        h_times += times
        h_len[i] = len(ids)
    history, ignored_h = _ragged(catalog.items, h_ids, h_len, np.asarray(h_times, dtype=np.int64))

    e_ids = [x for r in reqs for x in r.exclude_item_ids]
    e_len = np.array([len(r.exclude_item_ids) for r in reqs], dtype=np.int64)
    exclude, ignored_e = _ragged(catalog.items, e_ids, e_len, None)

    keys = sorted({k for r in reqs for k in r.context})
    context = {k: context_column([r.context.get(k) for r in reqs]) for k in keys}
    requests = Requests(users=users, timestamps=ts, history=history, exclude=exclude, context=context,
                        user_ids=user_ids)
    return Encoded(requests, users < catalog.users.oov, ignored_h, ignored_e)


def _ragged(vocab: Vocab, ids: list, lengths: np.ndarray, times: np.ndarray | None) -> tuple[Ragged, np.ndarray]:
    """Rows of known item indices (unknown ids dropped) and (B,) the number dropped per row."""
    idx = encode_ids(vocab, ids)
    keep = idx < vocab.oov
    rows = np.repeat(np.arange(len(lengths)), lengths)
    kept = np.bincount(rows[keep], minlength=len(lengths)).astype(np.int64)
    indptr = np.r_[0, np.cumsum(kept)].astype(np.int64)
    return Ragged(indptr, idx[keep], None if times is None else times[keep]), lengths - kept


def _finite(values: np.ndarray) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values.tolist()]


def build_responses(
    catalog: Catalog,
    results: Results,
    enc: Encoded,
    reqs: Sequence[Any],
    model_version: str,
    timings_ms: dict[str, float],
    request_id: str,
) -> list[dict]:
    """One JSON-ready response dict per request (the shape of ``serving.schemas.RankResponse``).

    Padding (-1) is dropped, each list is cut to its request's ``k``, and an excluded item is never
    returned even if a stage broke that contract (it is then logged).
    """
    out = []
    n = catalog.n_items
    for b, r in enumerate(reqs):
        row = results.items[b]
        pos = np.flatnonzero((row >= 0) & (row < n))
        excl = enc.requests.exclude.row(b) if enc.requests.exclude is not None else np.zeros(0, np.int64)
        if len(excl):
            bad = np.isin(row[pos], excl)
            if bad.any():
                logger.error("engine returned %d excluded item(s) for request %d of %s; dropped", int(bad.sum()),
                             b, request_id)
                pos = pos[~bad]
        pos = pos[: r.k]
        ids = catalog.items.decode(row[pos]).tolist()
        scores = _finite(results.scores[b, pos].astype(np.float64))
        # every stage's and task's score of each returned item (e.g. prerank, rank, p_click, p_like, ann)
        per_stage = {name: _finite(v[b, pos].astype(np.float64)) for name, v in results.stage_scores.items()}
        items = [{"item_id": ids[j], "score": scores[j], "scores": {s: v[j] for s, v in per_stage.items()}}
                 for j in range(len(ids))]
        resp = {
            "request_id": request_id,
            "user_id": r.user_id,
            "items": items,
            "model_version": model_version,
            "degraded": list(results.degraded[b]) if b < len(results.degraded) else [],
            "timings_ms": timings_ms,
        }
        if r.debug:
            resp["debug"] = {
                "candidates": {s: int((c[b] >= 0).sum()) for s, c in results.stages.items()},
                "known_user": bool(enc.known_user[b]),
                "ignored_history_items": int(enc.ignored_history[b]),
                "ignored_exclude_items": int(enc.ignored_exclude[b]),
            }
        out.append(resp)
    return out
