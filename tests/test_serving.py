"""The HTTP ranking service against a real uvicorn server on a loopback port (a thread of this process, or the
``recsys serve`` command in a subprocess), over a bundle trained once on the tiny synthetic world.

Covers: answers equal in-process ``Engine.rank``; cold start; batch == single requests; 413 / 422 input limits;
deadlines (a slow scoring stage -> degraded 200 within the budget; slow retrieval -> 504 within the budget);
overload (503 + Retry-After without queueing); unexpected errors (500 JSON, server goes on); hot reload of a
good bundle under a request stream (no failed request) and refusal of tampered / incompatible ones;
the ``latest`` watcher; bundles reaching outside themselves refused; admin auth; readiness; Prometheus counts;
OpenAPI; a hypothesis fuzz finding no 5xx.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving_support import (  # tests/serving_support.py
    T_REQ, TOKEN, LiveServer, RequestStream, SlowRetrieval, SlowStage, direct, item_ids, known_users, metric,
    new_version, point_latest, recsys_serve, serve_engine,
)

from recsys.engine import Engine
from serving.app import create_app
from serving.config import ServingConfig
from serving.schemas import BatchRankResponse, RankResponse
from serving.state import ReloadRefused, ServiceState

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(serving_bundle) -> Path:
    return serving_bundle


@pytest.fixture(scope="module")
def engine(serving_engine) -> Engine:
    return serving_engine


@pytest.fixture(scope="module")
def server(bundle):
    state = ServiceState(ServingConfig(budget_ms=2000), bundle)
    state.load_initial()
    with LiveServer(create_app(state, admin_token=TOKEN)) as srv:
        yield srv


# --------------------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------------------


def test_rank_equals_in_process_engine_and_respects_exclusions(server, engine):
    user = known_users(engine, 3)[2]
    history = item_ids(engine, [5, 9, 14])
    first = server.client.post("/v1/rank", json={"user_id": user, "k": 10, "history": history,
                                                 "timestamp": T_REQ}).json()
    exclude = [it["item_id"] for it in first["items"][:3]]
    r = server.client.post("/v1/rank", json={"user_id": user, "k": 10, "history": history,
                                             "exclude_item_ids": exclude, "timestamp": T_REQ})
    assert r.status_code == 200, r.text
    body = RankResponse.model_validate(r.json())
    got = [it.item_id for it in body.items]
    assert got == direct(engine, user, history, exclude, 10)
    assert len(got) == 10 and not set(got) & set(exclude) and not set(got) & set(history)
    assert body.model_version == engine.version and body.degraded == []
    assert all(it.score is not None for it in body.items)
    assert r.headers["x-request-id"] == body.request_id
    assert set(body.timings_ms) >= {"retrieval", "total"} | {s.name for s, _ in engine.stages}


def test_stage_scores_always_and_debug_adds_funnel_sizes(server, engine):
    user = known_users(engine, 1)[0]
    r = server.client.post("/v1/rank", json={"user_id": user, "k": 5, "debug": True,
                                             "history": [item_ids(engine, [1])[0], 987654321]})
    body = r.json()
    stage_names = {s.name for s, _ in engine.stages}
    assert set(body["debug"]["candidates"]) == {"retrieval"} | stage_names
    assert body["debug"]["candidates"]["retrieval"] >= 5
    assert body["debug"]["known_user"] is True and body["debug"]["ignored_history_items"] == 1
    for it in body["items"]:
        assert stage_names <= set(it["scores"])
        last = [s.name for s, _ in engine.stages][-1] if engine.stages else None
        if last:
            assert it["scores"][last] == pytest.approx(it["score"])
    plain = server.client.post("/v1/rank", json={"user_id": user, "k": 5}).json()
    # per-stage scores are always there; debug only adds the funnel sizes and id diagnostics
    assert "debug" not in plain and all(set(it["scores"]) == set(body["items"][0]["scores"]) for it in plain["items"])


def test_cold_start_is_served_by_the_fallback(server, engine):
    r = server.client.post("/v1/rank", json={"user_id": "someone-new", "k": 8, "timestamp": T_REQ})
    assert r.status_code == 200
    body = r.json()
    assert body["degraded"] == ["cold_start"] and len(body["items"]) == 8
    assert [it["item_id"] for it in body["items"]] == direct(engine, "someone-new", [], [], 8)
    # an unknown user *with* a history is personalised from it: not a cold start
    warm = server.client.post("/v1/rank", json={"user_id": "someone-new", "k": 8,
                                                "history": item_ids(engine, [3, 4])}).json()
    assert warm["degraded"] == []
    # ids are matched as typed: the string form of a known integer id is an unknown user
    user = known_users(engine, 1)[0]
    assert server.client.post("/v1/rank", json={"user_id": str(user), "k": 3}).json()["degraded"] == ["cold_start"]


def test_batch_equals_single_requests(server, engine):
    users = known_users(engine, 2)
    reqs = [{"user_id": users[0], "k": 3, "timestamp": T_REQ},
            {"user_id": "new-user", "k": 7, "timestamp": T_REQ},
            {"user_id": users[1], "k": 5, "history": item_ids(engine, [2, 7]), "timestamp": T_REQ,
             "context": {"hour": 9, "device": "mobile"}}]
    r = server.client.post("/v1/rank/batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    batch = BatchRankResponse.model_validate(r.json())
    assert len(batch.responses) == 3
    for req, resp in zip(reqs, batch.responses):
        single = server.client.post("/v1/rank", json=req).json()
        assert [it.item_id for it in resp.items] == [it["item_id"] for it in single["items"]]
        assert resp.degraded == single["degraded"] and resp.user_id == req["user_id"]
        assert len(resp.items) == req["k"]


# --------------------------------------------------------------------------------------------------------
# Input limits
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, field", [
    ({"user_id": 1, "k": 0}, "k"),
    ({"user_id": 1, "k": 10**9}, "k"),
    ({"user_id": 1, "k": "5"}, "k"),
    ({"user_id": 1, "k": 5.0}, "k"),
    ({"user_id": True}, "user_id"),
    ({"user_id": 1.5}, "user_id"),
    ({"user_id": 2**64}, "user_id"),
    ({"k": 5}, "user_id"),
    ({"user_id": 1, "kk": 5}, "kk"),
    ({"user_id": 1, "history": [{"item": 3}]}, "history"),
    ({"user_id": 1, "history": list(range(501))}, "history"),
    ({"user_id": 1, "exclude_item_ids": "1,2"}, "exclude_item_ids"),
    ({"user_id": 1, "timeout_ms": 1}, "timeout_ms"),
    ({"user_id": 1, "debug": "yes"}, "debug"),
    ({"user_id": 1, "context": {"hour": [1]}}, "context"),
])
def test_invalid_requests_are_422_naming_the_field(server, body, field):
    r = server.client.post("/v1/rank", json=body)
    assert r.status_code == 422, r.text
    err = r.json()
    assert err["error"] == "invalid_request" and err["request_id"]
    assert any(field in d["loc"] for d in err["detail"]), err
    assert field in err["message"]


def test_batch_limits(server):
    assert server.client.post("/v1/rank/batch", json={"requests": []}).status_code == 422
    many = {"requests": [{"user_id": i} for i in range(65)]}
    r = server.client.post("/v1/rank/batch", json=many)
    assert r.status_code == 422 and "requests" in r.json()["message"]
    r = server.client.post("/v1/rank", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"


def test_oversized_body_is_413_by_length_and_while_reading(server):
    big = json.dumps({"user_id": 1, "history": [1] * 400_000}).encode()
    assert len(big) > ServingConfig().max_body_bytes
    r = server.client.post("/v1/rank", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"

    def chunks():  # no Content-Length: chunked transfer, counted while read
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    r = server.client.post("/v1/rank", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"
    assert server.client.get("/healthz").status_code == 200


# --------------------------------------------------------------------------------------------------------
# Deadlines, overload, errors
# --------------------------------------------------------------------------------------------------------


def test_slow_stage_degrades_within_budget(engine):
    if not engine.stages:
        pytest.skip("the bundle has no scoring stage")
    slow = Engine(engine.retrieval, [(SlowStage(s, 1.5), c) for s, c in engine.stages], engine.retrieve_k,
                  version=engine.version, catalog=engine.catalog)
    budget = 300
    with serve_engine(slow, budget_ms=budget, grace_ms=100) as srv:
        user = known_users(engine, 1)[0]
        t0 = time.perf_counter()
        r = srv.client.post("/v1/rank", json={"user_id": user, "k": 5, "timestamp": T_REQ})
        elapsed = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        body = r.json()
        first = engine.stages[0][0].name
        assert f"{first}:timeout" in body["degraded"] or f"{first}:deadline" in body["degraded"]
        assert len(body["items"]) == 5
        assert body["timings_ms"]["total"] <= budget + 50
        assert elapsed < (budget + 250) / 1000
        text = srv.client.get("/metrics").text
        assert metric(text, "recsys_degradations_total", kind=f"{first}:timeout") >= 1


def test_slow_retrieval_is_504_within_budget(engine):
    slow = Engine(SlowRetrieval(engine.retrieval, delay=2.0), engine.stages, engine.retrieve_k,
                  version=engine.version, catalog=engine.catalog)
    budget = 200
    with serve_engine(slow, budget_ms=budget) as srv:
        t0 = time.perf_counter()
        r = srv.client.post("/v1/rank", json={"user_id": 1, "k": 5})
        elapsed = time.perf_counter() - t0
        assert r.status_code == 504 and r.json()["error"] == "deadline_exceeded"
        assert elapsed < (budget + 250) / 1000
        # a per-request timeout_ms is honoured as well
        t0 = time.perf_counter()
        r = srv.client.post("/v1/rank", json={"user_id": 1, "k": 5, "timeout_ms": 50})
        assert r.status_code == 504 and time.perf_counter() - t0 < 0.3
        assert srv.client.get("/healthz").status_code == 200
        text = srv.client.get("/metrics").text
        assert metric(text, "recsys_deadline_exceeded_total") == 2
        assert metric(text, "recsys_requests_total", route="/v1/rank", status="504") == 2


def test_overload_is_503_with_retry_after_and_admitted_requests_keep_latency(engine):
    if not engine.stages:
        pytest.skip("the bundle has no scoring stage")
    delay = 0.6
    slow = Engine(engine.retrieval, [(SlowStage(s, delay), c) for s, c in engine.stages], engine.retrieve_k,
                  version=engine.version, catalog=engine.catalog)
    with serve_engine(slow, max_inflight=1, budget_ms=4000, retry_after_s=2) as srv:
        result = {}
        user = known_users(engine, 1)[0]

        def first():
            t0 = time.perf_counter()
            with httpx.Client(base_url=srv.url, timeout=10) as c:
                result["r"] = c.post("/v1/rank", json={"user_id": user, "k": 5})
            result["t"] = time.perf_counter() - t0

        th = threading.Thread(target=first)
        th.start()
        t_wait = time.monotonic()
        while srv.app.state.limiter.inflight == 0:
            assert time.monotonic() - t_wait < 5
            time.sleep(0.005)
        t0 = time.perf_counter()
        r = srv.client.post("/v1/rank", json={"user_id": 2, "k": 5})
        shed = time.perf_counter() - t0
        assert r.status_code == 503 and r.headers["retry-after"] == "2" and r.json()["error"] == "overloaded"
        assert shed < 0.2  # refused at once, not queued behind the admitted request
        t0 = time.perf_counter()
        assert srv.client.get("/healthz").status_code == 200 and time.perf_counter() - t0 < 0.2
        th.join()
        assert result["r"].status_code == 200 and result["r"].json()["degraded"] == []
        assert result["t"] < delay * len(engine.stages) + 0.6
        r = srv.client.post("/v1/rank", json={"user_id": 2, "k": 5})  # the slot is free again
        assert r.status_code == 200
        text = srv.client.get("/metrics").text
        assert metric(text, "recsys_overload_rejections_total") == 1
        assert metric(text, "recsys_inflight_requests") == 0


def test_unexpected_error_is_500_json_and_server_goes_on(engine):
    broken = Engine(SlowRetrieval(engine.retrieval, error=RuntimeError("boom")), engine.stages, engine.retrieve_k,
                    version=engine.version, catalog=engine.catalog)
    with serve_engine(broken) as srv:
        r = srv.client.post("/v1/rank", json={"user_id": 1, "k": 5}, headers={"x-request-id": "abc-123"})
        assert r.status_code == 500
        assert r.json() == {"error": "internal_error", "message": r.json()["message"], "request_id": "abc-123"}
        assert "boom" not in r.text  # no internals leak
        assert srv.client.get("/healthz").status_code == 200
        assert srv.client.post("/v1/rank", json={"user_id": 1, "k": 5}).status_code == 500
        text = srv.client.get("/metrics").text
        assert metric(text, "recsys_errors_total", kind="RuntimeError") == 2


# --------------------------------------------------------------------------------------------------------
# Readiness, reload, admin
# --------------------------------------------------------------------------------------------------------


def test_readyz_is_503_until_the_bundle_is_loaded(bundle):
    gate = threading.Event()

    def slow_loader(path):
        from recsys.training import load_engine

        gate.wait(10)
        return load_engine(path)

    state = ServiceState(ServingConfig(), bundle, loader=slow_loader)
    with LiveServer(create_app(state)) as srv:
        assert srv.client.get("/healthz").json() == {"status": "ok"}
        r = srv.client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading" and "retry-after" in r.headers
        r = srv.client.post("/v1/rank", json={"user_id": 1})
        assert r.status_code == 503 and r.json()["error"] == "not_ready"
        gate.set()
        t0 = time.monotonic()
        while srv.client.get("/readyz").status_code != 200:
            assert time.monotonic() - t0 < 15
            time.sleep(0.05)
        assert srv.client.get("/readyz").json()["model_version"] == state.version
        assert srv.client.post("/v1/rank", json={"user_id": 1}).status_code == 200


@pytest.fixture()
def own_bundle(bundle, tmp_path) -> Path:
    """A private copy of the bundle folder (these tests move its `latest`)."""
    art = tmp_path / "art"
    shutil.copytree(bundle, art, symlinks=True)
    return art


def test_reload_swaps_version_with_no_failed_request_and_refuses_bad_bundles(own_bundle):
    state = ServiceState(ServingConfig(budget_ms=2000), own_bundle)
    state.load_initial()
    old = state.version
    with LiveServer(create_app(state, admin_token=TOKEN)) as srv:
        auth = {"authorization": f"Bearer {TOKEN}"}
        good = new_version(own_bundle, "20990101T000000Z-aaaaaaaa")
        point_latest(own_bundle, good.name)
        with RequestStream(srv.url, {"user_id": "u", "k": 5}) as stream:
            time.sleep(0.2)
            r = srv.client.post("/admin/reload", headers=auth)
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "reloaded"
        assert r.json()["model_version"] == good.name and r.json()["previous_version"] == old
        assert stream.statuses and set(stream.statuses) == {200}
        assert stream.versions[0] == old and stream.versions[-1] == good.name
        switch = stream.versions.index(good.name)
        assert set(stream.versions[switch:]) == {good.name}  # never back to the old engine
        assert srv.client.post("/admin/reload", headers=auth).json()["status"] == "unchanged"

        for tamper, why in (("bytes", "sha256"), ("format", "format_version")):
            bad = new_version(own_bundle, f"20990102T000000Z-{tamper}", tamper=tamper)
            with RequestStream(srv.url, {"user_id": "u", "k": 5}) as stream:
                time.sleep(0.1)
                r = srv.client.post("/admin/reload", headers=auth, json={"path": str(bad)})
                time.sleep(0.1)
            assert r.status_code == 422 and r.json()["error"] == "bundle_refused"
            assert why in r.json()["message"]
            assert set(stream.statuses) == {200} and set(stream.versions) == {good.name}
        assert srv.client.get("/readyz").json()["model_version"] == good.name
        r = srv.client.post("/admin/reload", headers=auth, json={"path": str(own_bundle / "missing")})
        assert r.status_code == 422
        text = srv.client.get("/metrics").text
        assert metric(text, "recsys_reloads_total", outcome="ok") == 2  # initial load + the good reload
        assert metric(text, "recsys_reloads_total", outcome="failed") == 3
        assert metric(text, "recsys_model_info", version=good.name) == 1


def escaping_version(art: Path, name: str, how: str, outside: Path) -> Path:
    """A version whose popularity.npy is read from ``outside`` (an identical copy, so checksums alone pass):
    through a ``..`` manifest entry, an absolute one, or a symlink."""
    import hashlib

    dst = new_version(art, name)
    real = dst / "retrieval" / "popularity.npy"
    shutil.copyfile(real, outside)
    m = json.loads((dst / "manifest.json").read_text())
    meta = m["files"]["retrieval/popularity.npy"]
    assert meta["sha256"] == hashlib.sha256(outside.read_bytes()).hexdigest()
    if how == "symlink":
        real.unlink()
        real.symlink_to(outside)
    else:
        entry = os.path.relpath(outside, dst) if how == "dotdot" else str(outside)
        m["files"][entry] = meta
        (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.mark.parametrize("how, why", [("dotdot", "'..'"), ("absolute", "absolute path"), ("symlink", "symlink")])
def test_bundles_reaching_outside_are_refused_at_start_and_on_reload(own_bundle, tmp_path, how, why):
    bad = escaping_version(own_bundle, f"20990106T000000Z-{how}", how, tmp_path / "outside.npy")
    with pytest.raises(ReloadRefused, match=why):
        ServiceState(ServingConfig(), bad).load_initial()
    state = ServiceState(ServingConfig(budget_ms=2000), own_bundle)
    state.load_initial()
    old = state.version
    with LiveServer(create_app(state, admin_token=TOKEN)) as srv:
        with RequestStream(srv.url, {"user_id": "u", "k": 5}) as stream:
            time.sleep(0.1)
            r = srv.client.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"},
                                json={"path": str(bad)})
            time.sleep(0.1)
        assert r.status_code == 422 and r.json()["error"] == "bundle_refused" and why in r.json()["message"]
        assert stream.statuses and set(stream.statuses) == {200} and set(stream.versions) == {old}


def test_watcher_follows_latest(own_bundle):
    state = ServiceState(ServingConfig(watch_interval_s=0.05), own_bundle)
    state.load_initial()
    original = (own_bundle / "latest").resolve()
    with LiveServer(create_app(state)):
        bad = new_version(own_bundle, "20990103T000000Z-bad", tamper="bytes")
        point_latest(own_bundle, bad.name)
        time.sleep(0.5)
        assert state.version != bad.name  # refused once, not retried in a loop
        assert metric(state.metrics.render().decode(), "recsys_reloads_total", outcome="failed") == 1
        good = new_version(own_bundle, "20990104T000000Z-good", src=original)
        point_latest(own_bundle, good.name)
        t0 = time.monotonic()
        while state.version != good.name:
            assert time.monotonic() - t0 < 10, "the watcher did not pick up the new latest"
            time.sleep(0.05)


def test_admin_routes_need_the_token(server, engine):
    assert server.client.post("/admin/reload").status_code == 401
    assert server.client.post("/admin/reload").headers["www-authenticate"] == "Bearer"
    assert server.client.post("/admin/reload", headers={"authorization": "Bearer nope"}).status_code == 403
    r = server.client.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"}, json={"pth": "x"})
    assert r.status_code == 422
    with serve_engine(engine, token=None) as srv:  # no token configured: the routes do not exist
        assert srv.client.post("/admin/reload", headers={"authorization": "Bearer x"}).status_code == 404
        assert "/admin/reload" not in srv.client.get("/openapi.json").json()["paths"]


# --------------------------------------------------------------------------------------------------------
# Metrics, OpenAPI
# --------------------------------------------------------------------------------------------------------


def test_metrics_count_what_happened(engine):
    with serve_engine(engine) as srv:
        c = srv.client
        for _ in range(3):
            assert c.post("/v1/rank", json={"user_id": known_users(engine, 1)[0], "k": 4}).status_code == 200
        assert c.post("/v1/rank", json={"user_id": "new", "k": 4, "history": [123456789],
                                        "exclude_item_ids": ["x", "y"]}).status_code == 200
        assert c.post("/v1/rank", json={"user_id": 1, "k": 0}).status_code == 422
        assert c.post("/v1/rank/batch", json={"requests": [{"user_id": "a"}, {"user_id": "b"}]}).status_code == 200
        assert c.get("/nowhere").status_code == 404
        text = c.get("/metrics").text
        assert metric(text, "recsys_requests_total", route="/v1/rank", status="200") == 4
        assert metric(text, "recsys_requests_total", route="/v1/rank", status="422") == 1
        assert metric(text, "recsys_requests_total", route="/v1/rank/batch", status="200") == 1
        assert metric(text, "recsys_requests_total", route="other", status="404") == 1
        assert metric(text, "recsys_request_duration_seconds_count", route="/v1/rank") == 5
        assert metric(text, "recsys_stage_duration_seconds_count", stage="retrieval") == 5  # 4 single + 1 batch
        # "new" sent only an unknown item: its history is empty, so it is a cold start like "a" and "b"
        assert metric(text, "recsys_degradations_total", kind="cold_start") == 3
        assert metric(text, "recsys_unknown_ids_total", field="history") == 1
        assert metric(text, "recsys_unknown_ids_total", field="exclude") == 2
        assert metric(text, "recsys_unknown_ids_total", field="user") == 3
        assert metric(text, "recsys_inflight_requests") == 0
        assert metric(text, "recsys_model_info", version=engine.version) == 1


def test_openapi_documents_limits_and_errors(server):
    spec = server.client.get("/openapi.json").json()
    rank = spec["paths"]["/v1/rank"]["post"]
    assert {"200", "413", "422", "503", "504"} <= set(rank["responses"])
    assert "Retry-After" in rank["responses"]["503"]["headers"]
    schemas = spec["components"]["schemas"]
    req = schemas["RankRequest"]
    assert req["additionalProperties"] is False
    assert req["properties"]["k"]["maximum"] == ServingConfig().max_k and req["properties"]["k"]["minimum"] == 1
    assert set(spec["paths"]) >= {"/v1/rank", "/v1/rank/batch", "/healthz", "/readyz", "/metrics", "/admin/reload"}
    assert server.client.get("/docs").status_code == 200


# --------------------------------------------------------------------------------------------------------
# Fuzz: no request shape makes the server answer 5xx (hypothesis generates bodies mixing valid fields,
# limit-breaking values and arbitrary JSON; tests/test_serving_schemathesis.py generates them from the schema)
# --------------------------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)
# valid values, edge cases included (known and unknown ids of both types, int64 bounds, NaN / inf context)
_ok_ids = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(99_990, 100_210), st.text(min_size=1, max_size=40),
                    st.sampled_from([72, 155, 13, 100000, 100001, "100000"]))
_ok_events = st.lists(st.one_of(_ok_ids, st.fixed_dictionaries(
    {"item_id": _ok_ids}, optional={"timestamp": st.one_of(st.none(), st.integers(0, 10**11))})), max_size=12)
_ok_context = st.dictionaries(
    st.sampled_from(["hour", "device", "other"]) | st.text(min_size=1, max_size=64),
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), st.text(max_size=256),
              st.sampled_from([0, 23, "mobile", "desktop"])), max_size=4)
_ok_fields = {
    "k": st.integers(1, 100),
    "history": _ok_events,
    "exclude_item_ids": st.lists(_ok_ids, max_size=12),
    "context": _ok_context,
    "timestamp": st.one_of(st.none(), st.integers(0, 10**11)),
    "debug": st.booleans(),
    "timeout_ms": st.one_of(st.none(), st.floats(1000, 5000)),  # short budgets answer 504 by design
}
_ok_body = st.fixed_dictionaries({"user_id": _ok_ids}, optional=_ok_fields)
# anything: limit-breaking values, wrong types, unknown fields, arbitrary JSON
_bad_ids = st.one_of(st.integers(-(2**65), 2**65), st.text(max_size=300), _json)
_bad_fields = {
    "user_id": _bad_ids,
    "k": st.one_of(st.integers(-3, 120), _json),
    "history": st.one_of(st.lists(st.one_of(_bad_ids, st.fixed_dictionaries(
        {"item_id": _bad_ids}, optional={"timestamp": st.one_of(st.integers(-5, 2**41), _json)})), max_size=6), _json),
    "exclude_item_ids": st.one_of(st.lists(_bad_ids, max_size=6), _json),
    "context": st.one_of(st.dictionaries(st.text(max_size=70), _json, max_size=4), _json),
    "timestamp": st.one_of(st.integers(-5, 2**41), _json),
    "debug": _json,
    "timeout_ms": st.one_of(st.floats(0, 9) | st.floats(5001, 1e9), _json),
    "unknown_field": _json,
}
_any_body = st.fixed_dictionaries({}, optional=_bad_fields)
_bodies = st.one_of(
    st.tuples(st.just("/v1/rank"), _ok_body),
    st.tuples(st.just("/v1/rank/batch"), st.fixed_dictionaries(
        {"requests": st.lists(_ok_body, min_size=1, max_size=4)}, optional={"timeout_ms": st.floats(1000, 5000)})),
    st.tuples(st.just("/v1/rank"), _any_body),
    st.tuples(st.just("/v1/rank/batch"), st.fixed_dictionaries(
        {"requests": st.lists(st.one_of(_ok_body, _any_body), max_size=3)}, optional={"timeout_ms": _json})),
    st.tuples(st.sampled_from(["/v1/rank", "/v1/rank/batch"]), _json),
)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # huge context numbers overflow float32 (to inf): fine
@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=_bodies)
def test_fuzz_never_5xx(server, case):
    route, body = case
    data = json.dumps(body).encode()
    r = server.client.post(route, content=data, headers={"content-type": "application/json"})
    assert r.status_code < 500, (route, body, r.text)
    # json.dumps writes NaN / Infinity for non-finite floats: not JSON, a 400; anything else parses
    not_json = False
    try:
        json.loads(data, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except ValueError:
        not_json = True
    assert r.status_code == (400 if not_json else r.status_code) and r.status_code in (200, 400, 422), (body, r.text)
    if r.status_code == 400:
        assert not_json and r.json()["error"] == "invalid_json", (body, r.text)
    elif r.status_code == 200:
        (RankResponse if route == "/v1/rank" else BatchRankResponse).model_validate(r.json())
    else:
        assert r.json()["error"] == "invalid_request" and r.json()["detail"]


# --------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------


def test_recsys_serve_command(bundle, tmp_path):
    log = tmp_path / "serve.log"
    with recsys_serve(bundle, log, ("--set", "serving.budget_ms=1500", "--set", "serving.max_k=20"),
                      {"RECSYS_ADMIN_TOKEN": TOKEN}) as (proc, url):
        r = httpx.post(url + "/v1/rank", json={"user_id": "x", "k": 5})
        assert r.status_code == 200 and r.json()["degraded"] == ["cold_start"]
        assert httpx.post(url + "/v1/rank", json={"user_id": "x", "k": 21}).status_code == 422  # max_k from --set
        assert httpx.post(url + "/admin/reload", headers={"authorization": f"Bearer {TOKEN}"}).json()["status"] \
            == "unchanged"
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status: killed by SIGTERM)
    assert proc.returncode in (0, -signal.SIGTERM), (tmp_path / "serve.log").read_text()
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()


def test_recsys_serve_refuses_a_corrupt_bundle(own_bundle):
    bad = new_version(own_bundle, "20990105T000000Z-bad", tamper="bytes")
    out = subprocess.run([sys.executable, "-m", "recsys.cli", "-q", "serve", "--bundle", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "sha256" in out.stderr
