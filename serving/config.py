"""The online service's settings (the ``serving:`` section of a config file).

Light on purpose: only dataclasses, no FastAPI, no engine import, so :mod:`recsys.config` can hold a
``serving: ServingConfig`` field without importing the web stack. Checks raise ``ValueError`` naming the key;
:func:`recsys.config.from_dict` turns them into ``ConfigError`` with the section prefix.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    """How ``recsys serve`` answers requests.

    Deadlines: every rank request has a budget of ``budget_ms`` (a request may ask for ``timeout_ms`` within
    ``[min_timeout_ms, max_timeout_ms]``). Stage ``s`` may use at most ``stage_shares[s] * budget`` of what
    remains (a stage without a share may use all that remains; see :class:`recsys.engine.Deadline`). A
    scoring stage that runs out of time is skipped (``"<stage>:deadline"`` / ``"<stage>:timeout"`` in
    ``degraded``); retrieval that runs out of time is a 504. ``grace_ms`` is the extra time the service waits
    for the engine beyond the budget before answering 504 itself (the engine normally answers first).

    Overload: at most ``max_inflight`` rank requests (single or batch) are admitted at a time; the next one is
    answered 503 at once with ``Retry-After: retry_after_s`` (no queue). The default, 8, matches the engine's
    stage thread pool (``recsys.engine``: 8 workers): with more requests in flight than workers, stage calls
    queue inside the engine and spend their deadline waiting.

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
    min_timeout_ms: float = 10.0
    max_timeout_ms: float = 5000.0
    stage_shares: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"retrieval": 0.6, "prerank": 0.4, "rank": 0.6}
    )
    grace_ms: float = 100.0
    max_inflight: int = 8  # also the engine's stage thread pool size (recsys.engine._executor)
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
