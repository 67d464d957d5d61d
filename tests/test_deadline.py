"""Cooperative cancellation and running-work accounting (recsys.deadline): a stage that misses its budget stops
at its next checkpoint instead of running on in the shared pool, and the request's admission slot stays taken
until it has stopped."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from serving_support import known_users, serve_engine

from recsys.deadline import Cancelled, Deadline, checkpoint
from recsys.engine import Engine


class SteppedStage:
    """A scoring stage doing ``steps`` steps of ``step_s`` seconds with a checkpoint before each, then scoring."""

    def __init__(self, stage, steps: int, step_s: float) -> None:
        self.stage, self.name, self.steps, self.step_s = stage, stage.name, steps, step_s
        self.done_steps = 0
        self.finished = threading.Event()

    def score(self, requests, candidates):
        try:
            for _ in range(self.steps):
                checkpoint()
                time.sleep(self.step_s)
                self.done_steps += 1
            return self.stage.score(requests, candidates)
        finally:
            self.finished.set()


class Holder:
    def __init__(self) -> None:
        self.n, self.lock = 0, threading.Lock()

    def retain(self) -> None:
        with self.lock:
            self.n += 1

    def release(self) -> None:
        with self.lock:
            self.n -= 1


def test_checkpoint_is_a_no_op_outside_a_deadline():
    checkpoint()  # offline evaluation and training call stage code without a current run


def test_a_stage_past_its_budget_stops_at_its_next_checkpoint_and_is_counted_until_then(serving_engine):
    if not serving_engine.stages:
        pytest.skip("the bundle has no scoring stage")
    first, cutoff = serving_engine.stages[0]
    stepped = SteppedStage(first, steps=40, step_s=0.05)  # 2 s of work if nothing stops it
    eng = Engine(serving_engine.retrieval, [(stepped, cutoff)], serving_engine.retrieve_k,
                 version=serving_engine.version, catalog=serving_engine.catalog)
    user = serving_engine.catalog.users.ids[:1]
    from recsys.types import Ragged, Requests
    import numpy as np

    req = Requests(users=serving_engine.catalog.users.encode(user), timestamps=np.array([0]),
                   history=Ragged.empty(1), user_ids=user)
    holder = Holder()
    deadline = Deadline(0.5, {"retrieval": 0.6, first.name: 0.3}, holder=holder)
    res = eng.rank(req, 5, deadline=deadline)
    assert res.degraded[0] == [f"{first.name}:timeout"]
    assert stepped.finished.wait(5)
    deadline_steps = int(0.3 * 0.5 / 0.05)  # the steps that fit in the stage's budget
    assert stepped.done_steps <= deadline_steps + 2 < 40  # stopped, not run to completion
    t0 = time.monotonic()
    while holder.n:
        assert time.monotonic() - t0 < 5, "the holder was never released"
        time.sleep(0.01)


def test_a_cancelled_deadline_stops_its_stage_runs():
    deadline = Deadline(10.0)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = threading.Event()

        def work():
            started.set()
            for _ in range(200):
                checkpoint()
                time.sleep(0.01)
            return "finished"

        run, fut = deadline.submit(pool, 10.0, work)
        assert started.wait(5)
        deadline.cancel()
        with pytest.raises(Cancelled):
            fut.result(timeout=5)
        # a run submitted after the cancellation never starts its function
        _, fut2 = deadline.submit(pool, 10.0, work)
        with pytest.raises(Cancelled):
            fut2.result(timeout=5)


def test_the_admission_slot_is_held_until_the_timed_out_work_has_stopped(serving_engine):
    if not serving_engine.stages:
        pytest.skip("the bundle has no scoring stage")
    first, cutoff = serving_engine.stages[0]
    stepped = SteppedStage(first, steps=3, step_s=0.6)  # a step overruns the stage budget by far
    eng = Engine(serving_engine.retrieval, [(stepped, cutoff)], serving_engine.retrieve_k,
                 version=serving_engine.version, catalog=serving_engine.catalog)
    user = known_users(serving_engine, 1)[0]
    with serve_engine(eng, max_inflight=1, budget_ms=400, stage_shares={"retrieval": 0.6, first.name: 0.3}) as srv:
        r = srv.client.post("/v1/rank", json={"user_id": user, "k": 5})
        assert r.status_code == 200 and r.json()["degraded"] == [f"{first.name}:timeout"]
        # the answer is out, but the stage is still inside its first step: the slot is not free
        assert not stepped.finished.is_set()
        busy = srv.client.post("/v1/rank", json={"user_id": user, "k": 5})
        assert busy.status_code == 503 and busy.json()["error"] == "overloaded"
        assert stepped.finished.wait(5)
        assert stepped.done_steps == 1  # stopped at the checkpoint after the step it was in
        t0 = time.monotonic()
        while srv.app.state.limiter.inflight:
            assert time.monotonic() - t0 < 5
            time.sleep(0.01)
        with httpx.Client(base_url=srv.url, timeout=10) as c:
            assert c.post("/v1/rank", json={"user_id": "new", "k": 5}).status_code == 200
