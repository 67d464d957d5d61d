"""The Ray Serve deployment of the service answers exactly like the plain uvicorn server.

One test (local Ray with 2 CPUs, one replica, shut down after): the same requests to Serve's HTTP proxy and to a
plain server over the same bundle return the same items, model version and degradations. Skipped when Ray Serve
cannot be imported (it needs the ``ray[serve]`` extra).
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest
import torch

pytestmark = pytest.mark.ray
pytest.importorskip("ray.serve", reason="Ray Serve needs the ray[serve] extra")

torch.set_num_threads(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_serve_answers_like_the_plain_server(serving_bundle):
    import ray
    from ray import serve

    from recsys.config import RayConfig
    from recsys.distributed import init_ray
    from serving.app import create_app
    from serving.config import ServingConfig
    from serving.ray_serve import deploy
    from serving.state import ServiceState
    from serving_support import LiveServer

    art = serving_bundle
    cfg = ServingConfig(budget_ms=3000, warmup_requests=2)
    state = ServiceState(cfg, art)
    state.load_initial()
    users = state.current.engine.catalog.users.ids[:2].tolist()
    reqs = [{"user_id": users[0], "k": 5, "timestamp": 1_720_000_000},
            {"user_id": "new-user", "k": 4, "timestamp": 1_720_000_000},
            {"user_id": users[1], "k": 6, "history": state.current.engine.catalog.items.ids[:3].tolist(),
             "timestamp": 1_720_000_000}]
    with LiveServer(create_app(state)) as plain:
        expected = [plain.client.post("/v1/rank", json=r).json() for r in reqs]

    init_ray(RayConfig(num_cpus=2))
    try:
        port = _free_port()
        deploy(art, cfg, host="127.0.0.1", port=port, replicas=1)
        url = f"http://127.0.0.1:{port}"
        t0 = time.monotonic()
        while httpx.get(url + "/readyz", timeout=5).status_code != 200:
            assert time.monotonic() - t0 < 60
            time.sleep(0.2)
        for req, exp in zip(reqs, expected):
            got = httpx.post(url + "/v1/rank", json=req, timeout=10)
            assert got.status_code == 200, got.text
            got = got.json()
            assert [it["item_id"] for it in got["items"]] == [it["item_id"] for it in exp["items"]]
            assert got["model_version"] == exp["model_version"] and got["degraded"] == exp["degraded"]
        assert httpx.post(url + "/v1/rank", json={"user_id": 1, "k": 0}, timeout=10).status_code == 422
        assert "recsys_requests_total" in httpx.get(url + "/metrics", timeout=10).text
    finally:
        serve.shutdown()
        ray.shutdown()
