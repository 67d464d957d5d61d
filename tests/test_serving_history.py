"""Serving-time history features match offline: histories are sorted by time before recency reads the last
event, and an event without a timestamp takes the missing-value path (NaN), never the request time."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from recsys.features import DAY, assemble
from recsys.types import MISSING_TIME
from serving.encode import build_requests

T = 1_720_000_000


def _request(history, user_id="someone"):
    return SimpleNamespace(user_id=user_id, history=history, exclude_item_ids=[], context={}, timestamp=T, k=5,
                           debug=False)


def _event(item, t=None):
    return SimpleNamespace(item_id=item, timestamp=t)


def _recency(engine, enc) -> np.ndarray:
    stage = next((s for s, _ in engine.stages if hasattr(s, "ctx")), None)
    if stage is None:
        pytest.skip("the bundle has no feature-based stage")
    cands = engine.retrieval.retrieve(enc.requests, 5)
    return assemble(enc.requests, cands, stage.ctx, ["user_recency_days"])[:, 0, 0]


def test_history_is_sorted_by_time_and_unknown_times_are_missing(serving_engine):
    cat = serving_engine.catalog
    a, b, c = cat.items.ids[:3].tolist()
    reqs = [
        _request([a, b]),  # plain ids: no times at all
        _request([_event(a, T - 3 * DAY), _event(b, T - 1 * DAY), _event(c, T - 2 * DAY)]),  # out of order
        _request([_event(a, T - DAY), _event(b)]),  # the last event has no time
        _request([_event(a), _event(b, T - 5 * DAY)]),  # an earlier one has none: order kept, last is known
    ]
    enc = build_requests(cat, reqs, T)
    h = enc.requests.history
    assert (h.times[h.indptr[0]:h.indptr[1]] == MISSING_TIME).all()
    assert cat.items.decode(h.row(1)).tolist() == [a, c, b]  # time order
    assert h.times[h.indptr[1]:h.indptr[2]].tolist() == [T - 3 * DAY, T - 2 * DAY, T - DAY]
    assert cat.items.decode(h.row(3)).tolist() == [a, b]
    rec = _recency(serving_engine, enc)
    assert np.isnan(rec[0]) and np.isnan(rec[2])  # the missing-value path, not 0 days
    assert rec[1] == pytest.approx(1.0) and rec[3] == pytest.approx(5.0)
