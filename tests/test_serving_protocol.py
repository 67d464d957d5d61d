"""The service's HTTP protocol edges: 415 for a non-JSON Content-Type, 400 for bodies that are not JSON
(undecodable, NaN / Infinity, nested too deeply), both documented in the OpenAPI schema; /metrics shows the
model version, not where the bundle lies on disk; the measured timeout floor (422 instead of a certain 504)."""

from __future__ import annotations

import pytest
from serving_support import TOKEN, LiveServer, SlowRetrieval, known_users, serve_engine

from recsys.engine import Engine
from serving.app import create_app
from serving.config import ServingConfig
from serving.state import ServiceState


@pytest.fixture(scope="module")
def srv(serving_engine):
    with serve_engine(serving_engine, token=TOKEN, budget_ms=2000) as s:
        yield s


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])
def test_a_body_without_a_json_content_type_is_415_naming_the_header(srv, ctype):
    headers = {} if ctype is None else {"content-type": ctype}
    for route in ("/v1/rank", "/v1/rank/batch"):
        r = srv.client.post(route, content=b'{"user_id": 1}', headers=headers)
        assert r.status_code == 415, r.text
        assert r.json()["error"] == "unsupported_media_type" and "Content-Type" in r.json()["message"]
    r = srv.client.post("/admin/reload", content=b"{}", headers={**headers, "authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 415
    assert srv.app.state.limiter.inflight == 0


def test_json_media_types_with_parameters_are_accepted(srv, serving_engine):
    user = known_users(serving_engine, 1)[0]
    for ctype in ("application/json; charset=utf-8", "application/vnd.recsys+json"):
        r = srv.client.post("/v1/rank", content=f'{{"user_id": {user}}}'.encode(), headers={"content-type": ctype})
        assert r.status_code == 200, (ctype, r.text)
    # a reload without a body needs no Content-Type (it is refused here for having no bundle path, not 415)
    r = srv.client.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 422 and r.json()["error"] == "bundle_refused"


@pytest.mark.parametrize("body, why", [
    (b"{not json", "Expecting property name"),
    (b'{"user_id": 1, "timeout_ms": NaN}', "NaN is not a JSON value"),
    (b'{"user_id": 1, "context": {"x": Infinity}}', "Infinity is not a JSON value"),
    (b'{"user_id": 1, "context": {"x": -Infinity}}', "-Infinity is not a JSON value"),
    (b'{"user_id": 1, "context": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    (b'{"user_id": "\xff\xfe"}', "not UTF-8"),
])
def test_bodies_that_are_not_json_are_400_naming_why(srv, body, why):
    for route in ("/v1/rank", "/v1/rank/batch"):
        r = srv.client.post(route, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid_json" and why in r.json()["message"], r.text
    assert srv.client.get("/healthz").status_code == 200


def test_openapi_documents_400_and_415(srv):
    paths = srv.client.get("/openapi.json").json()["paths"]
    for path in ("/v1/rank", "/v1/rank/batch", "/admin/reload"):
        assert {"400", "415"} <= set(paths[path]["post"]["responses"]), path


def test_metrics_show_the_version_not_the_bundle_path(serving_bundle):
    state = ServiceState(ServingConfig(warmup_requests=0), serving_bundle)
    state.load_initial()
    with LiveServer(create_app(state)) as s:
        text = s.client.get("/metrics").text
    assert f'recsys_model_info{{version="{state.version}"}} 1.0' in text
    assert str(serving_bundle) not in text and "path=" not in text


def test_a_timeout_below_the_measured_floor_is_422_not_a_certain_504(serving_engine):
    slow = Engine(SlowRetrieval(serving_engine.retrieval, delay=0.06), serving_engine.stages,
                  serving_engine.retrieve_k, version=serving_engine.version, catalog=serving_engine.catalog)
    state = ServiceState(ServingConfig(warmup_requests=2))
    state.install(slow, "test")  # warm-up measures retrieval: >= 60 ms, so a timeout needs >= 2 * 60 / 0.6 = 200 ms
    floor = state.current.min_timeout_ms
    assert floor >= 200
    with LiveServer(create_app(state)) as s:
        assert s.client.get("/readyz").json()["min_timeout_ms"] == floor
        r = s.client.post("/v1/rank", json={"user_id": 1, "timeout_ms": 150})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "timeout_ms"] and f"{floor:g} ms" in r.json()["message"]
        r = s.client.post("/v1/rank/batch", json={"requests": [{"user_id": 1}], "timeout_ms": 150})
        assert r.status_code == 422 and "timeout_ms" in r.json()["message"]
        assert s.client.post("/v1/rank", json={"user_id": 1, "timeout_ms": 1000}).status_code == 200
