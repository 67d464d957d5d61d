"""The online service's settings (the ``serving:`` section of a config file).

Light on purpose: only dataclasses, no FastAPI, no engine import, so :mod:`recsys.config` can hold a
``serving: ServingConfig`` field without importing the web stack. Checks raise ``ValueError`` naming the key;
:func:`recsys.config.from_dict` turns them into ``ConfigError`` with the section prefix.
"""

from __future__ import annotations

import dataclasses
import os


def default_max_inflight() -> int:
    """Twice the CPUs this process may use, between 2 and 8 (see :class:`ServingConfig`)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(2, min(8, 2 * cpus))


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    """How ``recsys serve`` answers requests.

    Deadlines: every rank request has a budget of ``budget_ms`` (a request may ask for ``timeout_ms`` within
    ``[min_timeout_ms, max_timeout_ms]``). Stage ``s`` may use at most ``stage_shares[s] * budget`` of what
    remains (a stage without a share may use all that remains; see :class:`recsys.engine.Deadline`). A
    scoring stage that runs out of time is skipped (``"<stage>:deadline"`` / ``"<stage>:timeout"`` in
    ``degraded``); retrieval that runs out of time is a 504. No answer comes later than ``budget + grace_ms``:
    the service stops waiting for the engine at ``budget + grace_ms / 2`` and answers 504 itself, keeping the
    other half of the grace for the answer to leave a busy event loop (the engine normally answers first).
    The smallest ``timeout_ms`` accepted is the larger of ``min_timeout_ms`` and the served model's measured
    floor (``2 x retrieval cost / stage_shares["retrieval"]``, the retrieval cost being the fastest of three
    warm-up requests, the factor 2 the margin for the HTTP path and jitter; shown by ``/readyz``): a shorter
    timeout could never be met, so it is a 422 naming ``timeout_ms``, not a certain 504. A floor, not a
    promise: under load an accepted timeout can still end in a 504.

    Overload: at most ``max_inflight`` rank requests (single or batch) hold work at a time; the next one is
    answered 503 at once with ``Retry-After: retry_after_s`` (no queue). A request answered 504 keeps its slot
    until its last stage call has actually stopped (stages stop cooperatively at their next checkpoint,
    :mod:`recsys.deadline`), so the bound is on running work. The default is twice the CPUs this process may
    use, at most 8 (the engine's stage thread pool, ``recsys.engine``: 8 workers; with more requests in flight
    than workers, stage calls would queue inside the engine and spend their deadline waiting): the engine's
    Python parts share one interpreter lock with the event loop, and more requests in flight than the cores
    can run only slow each other and the loop down.

    Input limits: ``k`` in ``[1, max_k]``; at most ``max_history`` history events, ``max_exclude`` excluded
    items, ``max_context`` context entries per request and ``max_batch`` requests per batch; request bodies
    of at most ``max_body_bytes`` bytes (413 otherwise); string ids and values at most ``max_id_length``
    characters.

    Reload: admin routes need the bearer token in the environment variable ``admin_token_env`` (absent:
    the admin routes do not exist, 404). ``watch_interval_s`` > 0 polls the bundle folder's ``latest``
    pointer and reloads when it moves (0: off). ``warmup_requests`` requests are ranked on every newly loaded
    engine before it serves.

    ``threads``: torch / FAISS threads per process, set by ``recsys serve`` (concurrent requests already use
    the cores). ``replicas`` / ``replica_num_cpus``: the Ray Serve deployment (``recsys serve --ray``).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    budget_ms: float = 250.0
    min_timeout_ms: float = 50.0  # below this even a warm unloaded request can miss its budget
    max_timeout_ms: float = 5000.0
    stage_shares: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"retrieval": 0.6, "prerank": 0.4, "rank": 0.6}
    )
    grace_ms: float = 100.0
    max_inflight: int = dataclasses.field(default_factory=lambda: default_max_inflight())
    retry_after_s: int = 1
    max_k: int = 100
    max_history: int = 500
    max_exclude: int = 1000
    max_context: int = 32
    max_batch: int = 64
    max_body_bytes: int = 1_048_576
    max_id_length: int = 256
    admin_token_env: str = "RECSYS_ADMIN_TOKEN"
    watch_interval_s: float = 0.0
    warmup_requests: int = 8
    threads: int = 1  # torch / FAISS intra-op threads of the serving process (requests run in parallel)
    replicas: int = 1  # Ray Serve replicas (``recsys serve --ray``)
    replica_num_cpus: float = 1.0  # CPUs reserved per Ray Serve replica

    def __post_init__(self) -> None:
        positive = ("budget_ms", "min_timeout_ms", "max_timeout_ms", "max_inflight", "max_k", "max_batch",
                    "max_body_bytes", "max_id_length", "threads", "replicas", "replica_num_cpus")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"serving.{name}: must be > 0, got {getattr(self, name)}")
        for name in ("grace_ms", "max_history", "max_exclude", "max_context", "watch_interval_s",
                     "warmup_requests", "retry_after_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"serving.{name}: must be >= 0, got {getattr(self, name)}")
        if not (self.min_timeout_ms <= self.budget_ms <= self.max_timeout_ms):
            raise ValueError(
                "serving: need min_timeout_ms <= budget_ms <= max_timeout_ms, got "
                f"{self.min_timeout_ms} <= {self.budget_ms} <= {self.max_timeout_ms}"
            )
        for stage, share in self.stage_shares.items():
            if not (0.0 < share <= 1.0):
                raise ValueError(f"serving.stage_shares.{stage}: must be in (0, 1], got {share}")
        if not (0 < self.port < 65536):
            raise ValueError(f"serving.port: must be in 1..65535, got {self.port}")
        if not self.admin_token_env:
            raise ValueError("serving.admin_token_env: must name an environment variable")
