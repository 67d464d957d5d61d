"""The HTTP ranking service: a FastAPI app over :meth:`recsys.engine.Engine.rank` (the evaluator's code path).

Routes (see ``/docs`` or ``/openapi.json`` of a running server):

    POST /v1/rank          one request  -> ranked items (each with its per-stage / per-task scores),
                           model_version, degraded, timings_ms (debug: funnel sizes, id diagnostics)
    POST /v1/rank/batch    {"requests": [...]} -> {"responses": [...]}, one batched engine call
    GET  /healthz          the process is alive (200)
    GET  /readyz           200 when a bundle is loaded and warmed up, else 503
    GET  /metrics          Prometheus text (:mod:`serving.metrics`)
    POST /admin/reload     {"path": optional} load, verify, warm up and swap in a bundle (bearer token;
                           the route does not exist without a token: 404)

Errors are JSON ``{"error": code, "message": ..., "request_id": ..., "detail": [...]}``:
400 the body is not JSON (undecodable, a syntax error, NaN / Infinity, nested too deeply), 413 body too large,
415 a body without ``Content-Type: application/json``, 422 invalid request (``detail`` names each field),
503 overloaded / not ready (with ``Retry-After``), 504 deadline exceeded, 500 unexpected (logged with the
request id; the server goes on).

Execution: the engine is CPU-bound, so each admitted request runs on a worker thread of a pool with
``max_inflight`` threads (admission guarantees a free one); the event loop only parses, admits and answers,
so health checks and 503s stay fast under load. The engine runs each stage within its deadline share (see
:class:`recsys.deadline.Deadline`); the loop additionally answers 504 itself, and no answer comes later
than ``budget + grace_ms`` (the loop stops waiting at ``budget + grace_ms / 2``). Work that misses its budget
is cancelled cooperatively (the stage stops at its next checkpoint, :mod:`recsys.deadline`) and keeps the
request's admission ticket until it has stopped, so ``max_inflight`` bounds the work running, not only the
requests waiting for an answer.

This module deliberately does not use ``from __future__ import annotations``: FastAPI reads the endpoint
annotations, and the request models are built per config inside :func:`create_app`.
"""

import asyncio
import concurrent.futures
import hmac
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from typing import Any, Sequence

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.deadline import Deadline, DeadlineExceeded
from recsys.engine import Engine
from serving.admission import Limiter
from serving.encode import Encoded, build_requests, build_responses
from serving.metrics import CONTENT_TYPE_LATEST
from serving.middleware import ServiceMiddleware, error_body
from serving.protocol import StrictJSONRoute
from serving.schemas import (
    BatchRankResponse, ErrorResponse, HealthResponse, RankResponse, ReadyResponse, ReloadRequest, ReloadResponse,
    request_models,
)
from serving.state import Loaded, ReloadBusy, ReloadRefused, ServiceState

logger = logging.getLogger(__name__)

RANK, BATCH = "/v1/rank", "/v1/rank/batch"
ROUTES = {RANK, BATCH, "/healthz", "/readyz", "/metrics", "/admin/reload", "/docs", "/openapi.json"}
_FROM_ENV = object()

_ERRORS = {
    400: "the body is not valid JSON: undecodable, a syntax error, NaN / Infinity literals, or nested too deeply",
    401: "admin route without a bearer token",
    403: "admin route with a wrong token",
    409: "another reload is in progress",
    413: "request body larger than max_body_bytes",
    415: "a request body without `Content-Type: application/json`",
    422: "invalid request: `detail` names each invalid field (unknown fields, wrong types and limits included)",
    500: "unexpected server error (logged with the request id)",
    503: "overloaded (max_inflight requests in flight) or no model loaded yet; retry after Retry-After seconds",
    504: "the request's time budget ran out before retrieval finished",
}
_RETRY_HEADER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def _responses(*codes: int, **descriptions: str) -> dict:
    """OpenAPI error responses; ``descriptions`` (``e422="..."``) replace the default text of a code."""
    out: dict[int | str, Any] = {}
    for c in codes:
        out[c] = {"model": ErrorResponse, "description": descriptions.get(f"e{c}", _ERRORS[c])}
        if c == 503:
            out[c]["headers"] = _RETRY_HEADER
    return out


class ServiceError(Exception):
    """An expected error answered as JSON with ``status`` (and optional headers)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _rid(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "-")


def group_rows(engine: Engine, ks: Sequence[int]) -> list[tuple[int, np.ndarray]]:
    """(k, rows) groups answered by one ``Engine.rank`` call each.

    With scoring stages and k no larger than every cut-off, a request's top-k is exactly the first k of a
    larger request's list (the cut-offs and candidate lists do not depend on k), so such requests share one
    call at their largest k; any other k (or a retrieval-only engine) gets its own call.
    """
    ks = np.asarray(ks, dtype=np.int64)
    if engine.stages:
        limit = min([c for _, c in engine.stages] + [engine.retrieve_k])
        shared = ks <= limit
    else:
        shared = np.zeros(len(ks), dtype=bool)
    groups = []
    if shared.any():
        groups.append((int(ks[shared].max()), np.flatnonzero(shared)))
    for k in np.unique(ks[~shared]):
        groups.append((int(k), np.flatnonzero(~shared & (ks == k))))
    return groups


def deadline_check(deadline: Deadline, spent: bool = False) -> None:
    """Raise :class:`DeadlineExceeded` once the request was given up (504 sent), or with ``spent`` once its
    budget is spent."""
    if deadline.cancelled or (spent and deadline.remaining() <= 0):
        raise DeadlineExceeded("the budget ran out before the request reached the engine")


def create_app(state: ServiceState, admin_token: Any = _FROM_ENV) -> FastAPI:
    """The service over ``state`` (its ``cfg`` gives limits and budgets). ``admin_token``: the bearer token of
    the admin routes (default: the environment variable named by ``cfg.admin_token_env``; None or empty:
    no admin routes)."""
    cfg = state.cfg
    metrics = state.metrics
    models = request_models(cfg)
    RankRequest, BatchRankRequest = models.RankRequest, models.BatchRankRequest
    token = os.environ.get(cfg.admin_token_env) if admin_token is _FROM_ENV else admin_token
    token = token or None
    limiter = Limiter(cfg.max_inflight, on_change=metrics.inflight.set)
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=cfg.max_inflight, thread_name_prefix="rank")
    grace_s = cfg.grace_ms / 1000

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if state.current is None and state.bundle is not None and state.status == "loading":
            state.load_in_background()
        state.start_watcher()
        try:
            yield
        finally:
            state.stop_watcher()
            executor.shutdown(wait=False)

    app = FastAPI(
        title="recsys ranking service",
        version="1",
        summary="Ranks the catalogue for a user through the engine's funnel (retrieval -> pre-rank -> rank).",
        description=__doc__.split("\n\n", 1)[1].split("This module deliberately")[0],
        lifespan=lifespan,
    )
    app.router.route_class = StrictJSONRoute  # NaN / Infinity / undecodable / too deep: 400 (serving.protocol)
    app.state.service = state
    app.state.limiter = limiter

    # -- errors ---------------------------------------------------------------------------------------
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return JSONResponse(error_body(exc.code, exc.message, _rid(request)), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        message = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in detail[:10]) or "invalid request"
        return JSONResponse(error_body("invalid_request", message, _rid(request), detail), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return JSONResponse(error_body(codes.get(exc.status_code, f"http_{exc.status_code}"), str(exc.detail),
                                       _rid(request)), exc.status_code, headers=getattr(exc, "headers", None))

    # -- ranking --------------------------------------------------------------------------------------
    def rank_job(cur: Loaded, reqs: Sequence[Any], deadline: Deadline, rid: str, t0: float, batch: bool) -> bytes:
        """On a worker thread: encode, rank (one engine call per k group), build and serialise the answer."""
        engine = cur.engine
        deadline_check(deadline, spent=True)
        enc = build_requests(engine.catalog, reqs, int(time.time()))
        timings: dict[str, float] = {}
        out: list[dict | None] = [None] * len(reqs)
        for k, rows in group_rows(engine, [r.k for r in reqs]):
            sub = enc if len(rows) == len(reqs) else Encoded(
                enc.requests.take(rows), enc.known_user[rows], enc.ignored_history[rows], enc.ignored_exclude[rows])
            t = {}
            res = engine.rank(sub.requests, k, timings=t, deadline=deadline)
            for name, ms in t.items():
                timings[name] = timings.get(name, 0.0) + ms
            sub_reqs = [reqs[i] for i in rows]
            for i, resp in zip(rows, build_responses(engine.catalog, res, sub, sub_reqs, engine.version, timings,
                                                     rid)):
                out[i] = resp
        deadline_check(deadline)  # nobody waits for the answer any more: do not build it
        for name, ms in timings.items():
            metrics.stage_latency.labels(stage=name).observe(ms / 1000)
        timings["total"] = (time.perf_counter() - t0) * 1000
        for name in timings:
            timings[name] = round(timings[name], 3)
        for resp in out:
            resp["timings_ms"] = timings
            for kind in resp["degraded"]:
                metrics.degradations.labels(kind=kind).inc()
        unknown_users = int((~enc.known_user).sum())
        if unknown_users:
            metrics.unknown_ids.labels(field="user").inc(unknown_users)
        for field, n in (("history", enc.ignored_history.sum()), ("exclude", enc.ignored_exclude.sum())):
            if n:
                metrics.unknown_ids.labels(field=field).inc(int(n))
        body = ({"request_id": rid, "model_version": engine.version, "responses": out, "timings_ms": timings}
                if batch else out[0])
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()

    async def rank_on_worker(request: Request, reqs: Sequence[Any], timeout_ms: float | None, batch: bool):
        scope_state = request.scope.get("state", {})
        rid = scope_state.get("request_id", "-")
        t0 = scope_state.get("t0", time.perf_counter())
        cur = state.current
        if cur is None:
            raise ServiceError(503, "not_ready", f"no model loaded yet ({state.status})",
                               {"Retry-After": str(cfg.retry_after_s)})
        if timeout_ms is not None and timeout_ms < cur.min_timeout_ms:
            loc = ["body", "timeout_ms"]
            msg = (f"timeout_ms: {timeout_ms:g} ms can never be met by model {cur.engine.version}: at least "
                   f"{cur.min_timeout_ms:g} ms (its measured retrieval cost over its share of the budget)")
            raise RequestValidationError([{"loc": loc, "msg": msg.split(": ", 1)[1], "type": "less_than_floor"}])
        ticket = scope_state.get("ticket")
        deadline = Deadline((timeout_ms or cfg.budget_ms) / 1000, dict(cfg.stage_shares), start=t0, holder=ticket)

        def job() -> bytes:
            try:
                return rank_job(cur, reqs, deadline, rid, t0, batch)
            finally:
                if ticket is not None:
                    ticket.release()

        if ticket is not None:
            ticket.retain()
        try:
            fut = executor.submit(job)
        except RuntimeError:  # the executor is shut down (server stopping)
            if ticket is not None:
                ticket.release()
            raise ServiceError(503, "shutting_down", "the server is stopping", {"Retry-After": str(cfg.retry_after_s)})
        waiter = asyncio.wrap_future(fut)
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "exception not retrieved"
        try:
            # stop waiting at budget + grace / 2: the other half is for the 504 to get out of a busy loop
            body = await asyncio.wait_for(asyncio.shield(waiter), timeout=max(deadline.remaining(), 0) + grace_s / 2)
        except (DeadlineExceeded, asyncio.TimeoutError) as exc:
            deadline.cancel()  # whatever still runs for this request stops at its next checkpoint
            metrics.deadline.inc()
            why = str(exc) if isinstance(exc, DeadlineExceeded) else "the engine did not answer in time"
            raise ServiceError(504, "deadline_exceeded",
                               f"no answer within the {deadline.total_s * 1000:.0f} ms budget: {why}") from None
        except ServiceError:
            raise
        except Exception as exc:
            deadline.cancel()
            metrics.errors.labels(kind=type(exc).__name__).inc()
            logger.exception("rank request %s failed", rid)
            raise ServiceError(500, "internal_error",
                               "unexpected server error; quote the request id when reporting it") from exc
        return Response(body, media_type="application/json")

    @app.post(RANK, response_model=RankResponse, responses=_responses(400, 413, 415, 422, 500, 503, 504),
              summary="Rank items for one user")
    async def rank(request: Request, body: RankRequest):
        return await rank_on_worker(request, [body], body.timeout_ms, batch=False)

    @app.post(BATCH, response_model=BatchRankResponse, responses=_responses(400, 413, 415, 422, 500, 503, 504),
              summary="Rank items for several users in one engine call")
    async def rank_batch(request: Request, body: BatchRankRequest):
        given = [t for t in [body.timeout_ms] + [r.timeout_ms for r in body.requests] if t is not None]
        return await rank_on_worker(request, body.requests, min(given) if given else None, batch=True)

    # -- health, readiness, metrics -------------------------------------------------------------------
    @app.get("/healthz", response_model=HealthResponse, summary="The process is alive")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=ReadyResponse, summary="A model is loaded and warmed up",
             responses={503: {"model": ReadyResponse, "description": "loading, or the initial load failed",
                              "headers": _RETRY_HEADER}})
    async def readyz():
        if state.current is not None:
            return {"status": "ready", "model_version": state.version, "min_timeout_ms": state.current.min_timeout_ms}
        return JSONResponse({"status": state.status, "model_version": None, "message": state.error}, 503,
                            headers={"Retry-After": str(cfg.retry_after_s)})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    async def metrics_route():
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # -- admin ----------------------------------------------------------------------------------------
    if token:
        def require_admin(request: Request) -> None:
            scheme, _, cred = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not cred:
                raise ServiceError(401, "unauthorized", "admin routes need 'Authorization: Bearer <token>'",
                                   {"WWW-Authenticate": "Bearer"})
            if not hmac.compare_digest(cred.strip().encode(), token.encode()):
                raise ServiceError(403, "forbidden", "wrong admin token")

        @app.post("/admin/reload", response_model=ReloadResponse, dependencies=[Depends(require_admin)],
                  responses=_responses(400, 401, 403, 409, 413, 415, 422, 500,
                                       e422="invalid body, or the bundle was refused (missing, corrupt, "
                                            "incompatible or failed its warm-up); the old one serves"),
                  summary="Load and swap in a bundle")
        async def reload(request: Request, body: ReloadRequest | None = None):
            path = body.path if body is not None else None
            try:
                return await asyncio.get_running_loop().run_in_executor(None, state.reload, path)
            except ReloadBusy as exc:
                raise ServiceError(409, "reload_in_progress", str(exc)) from None
            except ReloadRefused as exc:
                raise ServiceError(422, "bundle_refused", f"bundle refused, still serving {state.version}: {exc}") \
                    from None

    app.add_middleware(ServiceMiddleware, metrics=metrics, limiter=limiter, max_body_bytes=cfg.max_body_bytes,
                       retry_after_s=cfg.retry_after_s, routes=ROUTES, admission={("POST", RANK), ("POST", BATCH)},
                       json_routes={("POST", RANK), ("POST", BATCH), ("POST", "/admin/reload")})
    return app
