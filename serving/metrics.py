"""Prometheus metrics of the service, in a registry of its own (one per app, so apps never share counters).

Exposed at ``GET /metrics`` in the Prometheus text format:

    recsys_requests_total{route, status}            counter   every HTTP request, by route template
    recsys_request_duration_seconds{route}           histogram wall time of every HTTP request
    recsys_stage_duration_seconds{stage}             histogram engine time per stage (Engine.rank timings)
    recsys_degradations_total{kind}                  counter   cold_start, <stage>:deadline, <stage>:timeout
    recsys_inflight_requests                         gauge     admitted rank requests not yet finished
    recsys_overload_rejections_total                 counter   503s for max_inflight
    recsys_deadline_exceeded_total                   counter   504s
    recsys_unknown_ids_total{field}                  counter   ids unknown to the model (user, history, exclude)
    recsys_errors_total{kind}                        counter   unexpected exceptions (500), by exception class
    recsys_reloads_total{outcome}                    counter   bundle reloads: ok / failed
    recsys_model_info{version}                       info      the model being served (its version only: the
                                                               bundle's location on disk is not exposed)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the app)

# seconds; rank requests are budgeted in tens to hundreds of milliseconds
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """The service's metric objects, registered in ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self.requests = Counter("recsys_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("recsys_request_duration_seconds", "HTTP request wall time", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram("recsys_stage_duration_seconds", "engine time per stage", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.degradations = Counter("recsys_degradations", "degraded responses by kind", ["kind"], registry=r)
        self.inflight = Gauge("recsys_inflight_requests", "admitted rank requests not yet finished", registry=r)
        self.overload = Counter("recsys_overload_rejections", "rank requests refused for max_inflight (503)",
                                registry=r)
        self.deadline = Counter("recsys_deadline_exceeded", "rank requests that ran out of time (504)", registry=r)
        self.unknown_ids = Counter("recsys_unknown_ids", "ids unknown to the model", ["field"], registry=r)
        self.errors = Counter("recsys_errors", "unexpected exceptions answered 500", ["kind"], registry=r)
        self.reloads = Counter("recsys_reloads", "bundle reloads by outcome", ["outcome"], registry=r)
        self.model = Info("recsys_model", "the model being served", registry=r)
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome=outcome)  # expose zeros before the first reload

    def set_model(self, version: str) -> None:
        self.model.info({"version": version})

    def render(self) -> bytes:
        return generate_latest(self.registry)
