"""Serving load test: a closed-loop HTTP client against ``recsys serve`` vs ``Engine.rank`` in-process.

The server runs as a subprocess (``python -m recsys.cli serve``) on a loopback port; the client keeps N
connections busy (each sends its next request when the previous answer arrived: closed loop) for a fixed
duration per concurrency, over raw HTTP/1.1 keep-alive sockets (asyncio streams: little client overhead).
Then, in this process with the server idle, the same request bodies go through ``Engine.rank`` directly
(encoded once, the same ``Deadline`` as the server uses) with N threads, closed loop as well. The difference
of the two latencies is the cost of the HTTP layer (parsing, validation, admission, thread hop, JSON).

    .venv/bin/python benchmarks/bench_serving.py [--bundle artifacts/demo] [--concurrency 1,4,8]
                                                  [--duration 5] [--k 10] [--overload]

``--overload`` instead measures, in one run on one server with the default ``max_inflight``: the unloaded p99
(one client), the sustainable load (closed loop with ``max_inflight`` clients), then an open loop at 10x that
rate (requests sent on schedule whatever the answers): the 503s' p50 / p99 latency, the accepted requests' p99
and max, the 504 count and the degraded share, beside the unloaded p99.

Without ``--bundle`` a tiny bundle is trained in a temporary folder (a few seconds). Prints one JSON object:
machine, bundle, settings, per concurrency the HTTP and in-process throughput (requests/s), p50/p95/p99/mean
latency (ms), errors by status and the share of answers with a stage dropped for the deadline, and the HTTP
overhead (p50 and p99 differences, throughput ratio).
Client and server share this machine's cores: on a 2-core machine the client's own CPU time is part of the cost.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from machine import machine_info as shared_machine_info  # noqa: E402  (benchmarks/machine.py)

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from serving.loadgen import closed_loop, http_post, open_loop
from serving.loadgen import summarize as loadgen_summary


def machine() -> dict:
    return shared_machine_info()


def tiny_bundle(tmp: Path) -> Path:
    from recsys.config import load_config
    from recsys.data.schema import read_dataset
    from recsys.data.synthetic import synthesize
    from recsys.training import train_engine

    synthesize("tiny", 0, tmp / "data")
    cfg = load_config(None, ["retrieval.two_tower.max_epochs=2", "systems=[engine]"])
    train_engine(read_dataset(tmp / "data"), cfg, tmp / "art")
    return tmp / "art"


def request_bodies(engine, n: int, k: int, seed: int) -> list[dict]:
    """``n`` requests: 90% known users with 0-20 random history items, 10% unknown users (cold start)."""
    rng = np.random.default_rng(seed)
    users, items = engine.catalog.users.ids, engine.catalog.items.ids
    out = []
    for i in range(n):
        if rng.random() < 0.1 or len(users) == 0:
            body = {"user_id": f"bench-new-{i}", "k": k}
        else:
            hist = items[rng.integers(0, len(items), size=int(rng.integers(0, 21)))].tolist()
            body = {"user_id": users[rng.integers(0, len(users))].item(), "k": k, "history": hist}
        body["timestamp"] = 1_720_000_000
        out.append(body)
    return out


def summarize(lat_s: list[float], statuses: dict, degraded: int, seconds: float) -> dict:
    """``degraded``: answers with a stage dropped for the deadline (cold starts are not counted)."""
    lat = np.asarray(lat_s) * 1000
    n = int(len(lat))
    ok = int(statuses.get(200, 0))
    return {
        "requests": n,
        "throughput_rps": round(n / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3) if n else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 3) if n else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 3) if n else None,
        "mean_ms": round(float(lat.mean()), 3) if n else None,
        "errors": {str(s): c for s, c in sorted(statuses.items()) if s != 200},
        "deadline_degraded_share": round(degraded / ok, 4) if ok else None,
    }


# ------------------------------------------------------------------------------------------------------------
# HTTP client (serving.loadgen: raw HTTP/1.1 keep-alive over asyncio streams)
# ------------------------------------------------------------------------------------------------------------


def http_request(port: int, body: dict) -> bytes:
    return http_post(port, "/v1/rank", body)


async def _http_level(port: int, reqs: list[bytes], concurrency: int, warmup_s: float, duration_s: float) -> dict:
    samples = await closed_loop(port, reqs, concurrency, duration_s, warmup_s)
    statuses: dict[int, int] = {}
    for smp in samples:
        statuses[smp.status] = statuses.get(smp.status, 0) + 1
    return summarize([smp.latency_s for smp in samples], statuses, sum(smp.degraded for smp in samples), duration_s)


def overload(port: int, reqs: list[bytes], max_inflight: int, warmup_s: float, duration_s: float) -> dict:
    """Unloaded p99 (one client), the sustainable load (closed loop at ``max_inflight`` clients: the answers per
    second the server gives when every admission slot is busy and nothing is refused), then an open loop at 10x
    that rate: the 503s' latency and the accepted requests' p99, all from the same server in one run."""
    unloaded = asyncio.run(_http_level(port, reqs, 1, warmup_s, duration_s))
    sustainable = asyncio.run(_http_level(port, reqs, max_inflight, warmup_s, duration_s))
    rate = 10 * sustainable["throughput_rps"]
    samples, dropped = asyncio.run(open_loop(port, reqs, rate, duration_s))
    loaded = loadgen_summary(samples, duration_s)
    achieved = round(len(samples) / duration_s, 1)
    return {
        "unloaded": unloaded,
        "sustainable": sustainable,
        "overload": {"offered_rps": round(rate, 1), "answered_rps": achieved, "client_dropped": dropped,
                     **loaded},
        "summary": {
            "unloaded_p99_ms": unloaded["p99_ms"],
            "sustainable_rps": sustainable["throughput_rps"],
            "overload_offered_rps": round(rate, 1),
            "overload_503_p50_ms": loaded["by_status"].get("503", {}).get("p50_ms"),
            "overload_503_p99_ms": loaded["by_status"].get("503", {}).get("p99_ms"),
            "overload_accepted_p99_ms": loaded["by_status"].get("200", {}).get("p99_ms"),
            "overload_accepted_max_ms": loaded["by_status"].get("200", {}).get("max_ms"),
            "overload_504": loaded["by_status"].get("504", {}).get("n", 0),
            "overload_accepted_degraded_share": loaded["deadline_degraded_share"],
        },
    }


# ------------------------------------------------------------------------------------------------------------
# In-process: Engine.rank on the same requests
# ------------------------------------------------------------------------------------------------------------


def in_process_level(engine, encoded: list, k: int, budget_s: float, shares: dict, concurrency: int,
                     warmup_s: float, duration_s: float) -> dict:
    from recsys.engine import Deadline

    lat: list[float] = []
    statuses: dict[int, int] = {}
    degraded = 0
    lock = threading.Lock()
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup_s, t_start + warmup_s + duration_s

    def worker(w: int) -> None:
        nonlocal degraded
        i = w
        while True:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            try:
                res = engine.rank(encoded[i % len(encoded)], k, deadline=Deadline(budget_s, shares, start=t0))
                status, deg = 200, any(":" in d for d in res.degraded[0])
            except Exception:  # DeadlineExceeded counts as the server's 504
                status, deg = 504, False
            t1 = time.perf_counter()
            i += concurrency
            if t0 >= t_measure:
                with lock:
                    lat.append(t1 - t0)
                    statuses[status] = statuses.get(status, 0) + 1
                    degraded += deg

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize(lat, statuses, degraded, duration_s)


# ------------------------------------------------------------------------------------------------------------


def start_server(bundle: Path, port: int, overrides: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "recsys.cli", "-q", "serve", "--bundle", str(bundle), "--port", str(port)]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"recsys serve exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return proc
        except OSError:
            pass
        if time.monotonic() - t0 > 300:
            proc.kill()
            raise RuntimeError("recsys serve did not become ready in 300 s")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: train a tiny one)")
    ap.add_argument("--concurrency", default="1,4,8", help="comma-separated closed-loop worker counts")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per concurrency")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each measurement")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--requests", type=int, default=500, help="distinct request bodies (cycled)")
    ap.add_argument("--budget-ms", type=float, default=None, help="serving.budget_ms (default: the config's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overload", action="store_true",
                    help="instead: the unloaded p99, the sustainable load, and 10x that load (open loop) on the "
                         "default max_inflight: 503 latency and the accepted requests' p99")
    args = ap.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]

    import torch

    from recsys.training import load_engine
    from serving.config import ServingConfig
    from serving.encode import build_requests
    from serving.schemas import request_models
    from serving.state import set_threads

    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    bundle = args.bundle or tiny_bundle(tmp)
    budget = {"budget_ms": args.budget_ms} if args.budget_ms else {}
    inflight = ServingConfig().max_inflight if args.overload else max(ServingConfig().max_inflight, max(levels))
    cfg = ServingConfig(max_inflight=inflight, **budget)
    overrides = [f"serving.max_inflight={cfg.max_inflight}", f"serving.budget_ms={cfg.budget_ms}"]

    set_threads(cfg.threads)
    engine = load_engine(bundle)
    bodies = request_bodies(engine, args.requests, args.k, args.seed)
    model = request_models(cfg).RankRequest
    encoded = [build_requests(engine.catalog, [model.model_validate(b)], 0).requests for b in bodies]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    proc = start_server(bundle, port, overrides, tmp / "serve.log")
    startup_s = time.perf_counter() - t0
    http: dict[str, dict] = {}
    try:
        reqs = [http_request(port, b) for b in bodies]
        if args.overload:
            result = overload(port, reqs, cfg.max_inflight, args.warmup, args.duration)
        for c in levels if not args.overload else []:
            http[str(c)] = asyncio.run(_http_level(port, reqs, c, args.warmup, args.duration))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

    if args.overload:
        print(json.dumps({
            "benchmark": "serving_overload", "machine": machine(),
            "bundle": {"path": str(bundle), "version": engine.version, "stages": [s.name for s, _ in engine.stages]},
            "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "k": args.k,
                         "distinct_requests": args.requests, "budget_ms": cfg.budget_ms, "grace_ms": cfg.grace_ms,
                         "max_inflight": cfg.max_inflight, "server_startup_s": round(startup_s, 2)},
            **result,
        }, indent=2))
        shutil.rmtree(tmp, ignore_errors=True)
        return 0
    inproc = {str(c): in_process_level(engine, encoded, args.k, cfg.budget_ms / 1000, dict(cfg.stage_shares), c,
                                       args.warmup, args.duration) for c in levels}
    overhead = {
        c: {"p50_ms": round(http[c]["p50_ms"] - inproc[c]["p50_ms"], 3),
            "p99_ms": round(http[c]["p99_ms"] - inproc[c]["p99_ms"], 3),
            "throughput_ratio": round(http[c]["throughput_rps"] / inproc[c]["throughput_rps"], 3)}
        for c in http if http[c]["requests"] and inproc[c]["requests"]
    }
    out = {
        "benchmark": "serving",
        "machine": machine(),
        "bundle": {"path": str(bundle), "version": engine.version, "stages": [s.name for s, _ in engine.stages],
                   "retrieve_k": engine.retrieve_k, "n_items": engine.catalog.n_items,
                   "n_users": engine.catalog.n_users},
        "settings": {"concurrency": levels, "duration_s": args.duration, "warmup_s": args.warmup, "k": args.k,
                     "distinct_requests": args.requests, "budget_ms": cfg.budget_ms,
                     "max_inflight": cfg.max_inflight, "threads": cfg.threads,
                     "torch_threads": torch.get_num_threads(), "server_startup_s": round(startup_s, 2)},
        "http": http,
        "in_process": inproc,
        "http_overhead": overhead,
    }
    print(json.dumps(out, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)  # the tiny bundle (if trained) and the server log
    return 0


if __name__ == "__main__":
    sys.exit(main())
