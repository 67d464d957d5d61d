"""Helpers shared by the service tests: a tiny trained bundle, a live uvicorn server on a loopback port, slow /
failing stage wrappers, metric parsing, bundle versions for reload tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from recsys.engine import Engine
from recsys.types import MISSING_TIME, Ragged, Requests
from serving.app import create_app
from serving.config import ServingConfig
from serving.state import ServiceState

TOKEN = "test-admin-token"
T_REQ = 1_720_000_000
TRAIN_OVERRIDES = ["retrieval.two_tower.max_epochs=2", "retrieval.refit=false", "systems=[engine]"]


def make_bundle(tmp: Path) -> Path:
    from recsys.config import load_config
    from recsys.data.schema import read_dataset
    from recsys.data.synthetic import synthesize
    from recsys.training import train_engine

    synthesize("tiny", 0, tmp / "data")
    train_engine(read_dataset(tmp / "data"), load_config(None, TRAIN_OVERRIDES), tmp / "art")
    return tmp / "art"


class LiveServer:
    """uvicorn serving ``app`` on a pre-bound loopback socket in a background thread."""

    def __init__(self, app) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            assert time.monotonic() - t0 < 10, "server did not start"
            time.sleep(0.01)
        self.client = httpx.Client(base_url=self.url, timeout=10)
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def serve_engine(engine: Engine, token: str | None = None, **cfg) -> LiveServer:
    state = ServiceState(ServingConfig(**cfg))
    state.install(engine, "test", warmup=False)
    return LiveServer(create_app(state, admin_token=token))


def metric(text: str, name: str, **labels) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def direct(engine: Engine, user_id, history: list, exclude: list, k: int) -> list:
    """The same request ranked in-process through Engine.rank, built independently of serving.encode."""
    cat = engine.catalog
    h = cat.items.encode(np.asarray(history, dtype=np.int64)) if history else np.zeros(0, np.int64)
    h = h[h < cat.items.oov]
    e = cat.items.encode(np.asarray(exclude, dtype=np.int64)) if exclude else np.zeros(0, np.int64)
    e = e[e < cat.items.oov]
    req = Requests(users=cat.users.encode(np.array([user_id])), timestamps=np.array([T_REQ]),
                   history=Ragged(np.array([0, len(h)]), h, np.full(len(h), MISSING_TIME)),
                   exclude=Ragged(np.array([0, len(e)]), e), user_ids=np.array([user_id]))
    res = engine.rank(req, k)
    row = res.items[0]
    return cat.items.decode(row[row >= 0]).tolist()


class SlowStage:
    """A scoring stage that sleeps ``delay`` seconds before scoring."""

    def __init__(self, stage, delay: float) -> None:
        self.stage, self.delay, self.name = stage, delay, stage.name

    def score(self, requests, candidates):
        time.sleep(self.delay)
        return self.stage.score(requests, candidates)


class SlowRetrieval:
    """The retrieval stage, sleeping ``delay`` seconds (or raising ``error``) before retrieving."""

    def __init__(self, stage, delay: float = 0.0, error: Exception | None = None) -> None:
        self._stage, self._delay, self._error = stage, delay, error

    def __getattr__(self, name):
        return getattr(self._stage, name)

    def _wait(self):
        time.sleep(self._delay)
        if self._error is not None:
            raise self._error

    def retrieve(self, *args, **kwargs):
        self._wait()
        return self._stage.retrieve(*args, **kwargs)

    def rank(self, *args, **kwargs):
        self._wait()
        return self._stage.rank(*args, **kwargs)


def known_users(engine: Engine, n: int) -> list:
    return engine.catalog.users.ids[:n].tolist()


def item_ids(engine: Engine, idx) -> list:
    return engine.catalog.items.ids[np.asarray(idx)].tolist()


def new_version(art: Path, name: str, tamper: str | None = None, src: Path | None = None) -> Path:
    """A copy of ``src`` (default: the latest version) under a new version name (a valid bundle), optionally
    tampered with."""
    src = src or (art / "latest").resolve()
    dst = art / name
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["version"] = name
    if tamper == "format":
        manifest["format_version"] = 99
    (dst / "manifest.json").write_text(json.dumps(manifest))
    if tamper == "bytes":
        p = dst / "retrieval" / "popularity.npy"
        data = bytearray(p.read_bytes())
        data[-1] ^= 0xFF
        p.write_bytes(bytes(data))
    return dst


def point_latest(art: Path, name: str) -> None:
    tmp = art / ".latest.tmp-test"
    os.symlink(name, tmp)
    os.replace(tmp, art / "latest")


class RequestStream:
    """Requests sent back to back from a thread until stopped; records every status and model version."""

    def __init__(self, url: str, body: dict) -> None:
        self.url, self.body = url, body
        self.statuses: list[int] = []
        self.versions: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self._stop.is_set():
                r = c.post("/v1/rank", json=self.body)
                self.statuses.append(r.status_code)
                if r.status_code == 200:
                    self.versions.append(r.json()["model_version"])

    def __enter__(self) -> "RequestStream":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def recsys_serve(bundle: Path, log: Path, args: tuple[str, ...] = (), env: dict | None = None):
    """``python -m recsys.cli serve`` on a free loopback port, waited for until /readyz answers 200 (at most
    60 s); yields (process, base url) and stops it with SIGTERM (killed after 20 s) on exit."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = open(log, "w+b")
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli", "-q", "serve", "--bundle", str(bundle), "--port",
                             str(port), *args], env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})},
                            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() - t0 < 60, "recsys serve did not become ready"
            time.sleep(0.1)
        yield proc, url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
