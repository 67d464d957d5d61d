"""The service's outermost ASGI layer: request ids, admission, body size limit, metrics, last-resort 500s.

For every HTTP request, in this order:

1. a request id (the caller's ``X-Request-ID`` when it is 1-64 characters of ``[A-Za-z0-9._-]``, else a new
   one), returned in the ``X-Request-ID`` header and in every error body;
2. ``Content-Length`` above ``max_body_bytes`` -> 413 at once, before reading the body; a body without a
   length (chunked) is counted while it is read and the request fails with 413 once it passes the limit;
3. on the JSON routes, a body without a JSON ``Content-Type`` -> 415 naming the header
   (:func:`serving.protocol.json_media_type_error`);
4. on the admission routes (rank), a :class:`~serving.admission.Ticket`: none left -> 503 with
   ``Retry-After`` at once (no queue; the body is not read);
5. any exception escaping the app -> a JSON 500 with the request id (logged, counted); the server goes on;
6. request count by (route template, status) and wall time by route.

Pure ASGI (no BaseHTTPMiddleware), so it adds no task or copy per request.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.admission import Limiter
from serving.metrics import ServiceMetrics
from serving.protocol import json_media_type_error

logger = logging.getLogger(__name__)

_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BodyTooLarge(HTTPException):
    """The request body passed ``max_body_bytes`` while it was read (-> 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")


def error_body(code: str, message: str, request_id: str, detail: list | None = None) -> dict:
    body = {"error": code, "message": message, "request_id": request_id}
    if detail is not None:
        body["detail"] = detail
    return body


async def send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class ServiceMiddleware:
    """See the module docstring. ``routes``: path -> metric label (others are labelled ``other``);
    ``admission``: the (method, path) pairs that take a ticket from ``limiter``; ``json_routes``: the (method,
    path) pairs whose body must be JSON."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        limiter: Limiter,
        max_body_bytes: int,
        retry_after_s: int,
        routes: set[str],
        admission: set[tuple[str, str]],
        json_routes: set[tuple[str, str]] = frozenset(),
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.limiter = limiter
        self.max_body = max_body_bytes
        self.retry_after = str(retry_after_s)
        self.routes = routes
        self.admission = admission
        self.json_routes = json_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")
        if not _RID.match(rid):
            rid = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"], state["t0"] = rid, t0
        path = scope.get("path", "")
        route = path if path in self.routes else "other"
        status = {"code": 0}
        ticket = None

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        try:
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                await send_json(send_with_id, 413, error_body(
                    "body_too_large", f"request body is larger than {self.max_body} bytes", rid))
                return
            if (scope.get("method"), path) in self.json_routes:
                why = json_media_type_error(headers)
                if why is not None:
                    await send_json(send_with_id, 415, error_body("unsupported_media_type", why, rid))
                    return
            if (scope.get("method"), path) in self.admission:
                ticket = self.limiter.try_acquire()
                if ticket is None:
                    self.metrics.overload.inc()
                    await send_json(send_with_id, 503, error_body(
                        "overloaded", f"{self.limiter.limit} requests in flight; retry later", rid),
                        {"Retry-After": self.retry_after})
                    return
                state["ticket"] = ticket
            seen = 0

            async def counted_receive() -> Message:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_body:
                        raise BodyTooLarge(self.max_body)
                return message

            await self.app(scope, counted_receive, send_with_id)
        except Exception as exc:  # the last net: never let a request take the server down
            if isinstance(exc, BodyTooLarge):
                if status["code"] == 0:
                    await send_json(send_with_id, 413, error_body("body_too_large", exc.detail, rid))
                return
            self.metrics.errors.labels(kind=type(exc).__name__).inc()
            logger.exception("request %s %s failed (request id %s)", scope.get("method"), path, rid)
            if status["code"] == 0:
                await send_json(send_with_id, 500, error_body(
                    "internal_error", "unexpected server error; quote the request id when reporting it", rid))
        finally:
            if ticket is not None:
                ticket.release()
            self.metrics.requests.labels(route=route, status=str(status["code"] or 499)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - t0)
