"""A small HTTP/1.1 load generator for the service (used by ``benchmarks/bench_serving.py`` and the overload test).

Raw keep-alive sockets over asyncio streams, so the client costs little CPU next to the server it measures:

* :func:`closed_loop`: N connections, each sending its next request when the previous answer arrived
  (optionally waiting ``Retry-After`` after a 503, as a well-behaved client does);
* :func:`open_loop`: requests sent at a fixed rate whatever the answers (what a crowd of independent users does),
  over a pool of connections; an arrival with no free connection is counted as ``client_dropped``.

Every answer is a :class:`Sample`: when it was sent, its latency, status and whether a stage was dropped for the
deadline (``degraded``: ``<stage>:deadline`` / ``<stage>:timeout`` in the body; cold starts do not count).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Sample:
    sent: float  # time.perf_counter() when the request was written
    latency_s: float
    status: int
    degraded: bool


def http_post(port: int, path: str, body: dict | bytes, content_type: str = "application/json") -> bytes:
    """The bytes of one ``POST path`` request with a JSON body."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   req: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request on a keep-alive connection and read the answer: (status, headers, body)."""
    writer.write(req)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers, await reader.readexactly(int(headers.get("content-length", 0)))


def _degraded(status: int, body: bytes) -> bool:
    return status == 200 and (b':deadline"' in body or b':timeout"' in body)


async def closed_loop(port: int, reqs: Sequence[bytes], concurrency: int, duration_s: float, warmup_s: float = 0.0,
                      honour_retry_after: bool = False) -> list[Sample]:
    """``concurrency`` connections back to back for ``warmup_s + duration_s``; samples sent after the warm-up."""
    out: list[Sample] = []
    t_start = time.perf_counter()
    t_measure, t_end = t_start + warmup_s, t_start + warmup_s + duration_s

    async def worker(w: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = w
        try:
            while (t0 := time.perf_counter()) < t_end:
                status, headers, body = await exchange(reader, writer, reqs[i % len(reqs)])
                t1 = time.perf_counter()
                i += concurrency
                if t0 >= t_measure:
                    out.append(Sample(t0, t1 - t0, status, _degraded(status, body)))
                if status == 503 and honour_retry_after:
                    await asyncio.sleep(min(float(headers.get("retry-after", 1)), max(t_end - t1, 0)))
        finally:
            writer.close()

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return out


async def open_loop(port: int, reqs: Sequence[bytes], rate: float, duration_s: float,
                    connections: int = 256) -> tuple[list[Sample], int]:
    """Send ``rate`` requests per second for ``duration_s`` at evenly spaced times over up to ``connections``
    keep-alive connections; returns the samples and the number of arrivals dropped for want of a free connection
    (the client's limit, not the server's)."""
    out: list[Sample] = []
    free: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened = 0
    dropped = 0
    tasks: set[asyncio.Task] = set()

    async def one(i: int, conn) -> None:
        reader, writer = conn
        t0 = time.perf_counter()
        try:
            status, _, body = await exchange(reader, writer, reqs[i % len(reqs)])
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()
            return
        out.append(Sample(t0, time.perf_counter() - t0, status, _degraded(status, body)))
        free.append(conn)

    n = int(rate * duration_s)
    t_start = time.perf_counter()
    for i in range(n):
        delay = t_start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if free:
            conn = free.pop()
        elif opened < connections:
            conn = await asyncio.open_connection("127.0.0.1", port)
            opened += 1
        else:
            dropped += 1
            continue
        task = asyncio.ensure_future(one(i, conn))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    for _, writer in free:
        writer.close()
    return out, dropped


def summarize(samples: Sequence[Sample], seconds: float) -> dict:
    """Throughput, latency percentiles (ms) of all answers and per status, degraded share of the 200s."""

    def pct(lat: np.ndarray) -> dict:
        if not len(lat):
            return {"n": 0}
        return {"n": int(len(lat)), "p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p99_ms": round(float(np.percentile(lat, 99)), 3), "max_ms": round(float(lat.max()), 3)}

    lat = np.array([s.latency_s for s in samples]) * 1000
    status = np.array([s.status for s in samples])
    ok = int((status == 200).sum())
    out = {"requests": int(len(samples)), "throughput_rps": round(len(samples) / seconds, 1),
           "ok_rps": round(ok / seconds, 1), **pct(lat)}
    out["by_status"] = {str(c): pct(lat[status == c]) for c in sorted(set(status.tolist()))}
    out["deadline_degraded_share"] = round(sum(s.degraded for s in samples) / ok, 4) if ok else None
    return out
