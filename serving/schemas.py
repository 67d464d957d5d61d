"""Request and response bodies of the HTTP service (pydantic v2), with the input limits of a ServingConfig.

Requests are **strict** (``strict=True``: no coercion, so ``"10"`` is not a valid ``k`` and ``true`` is not
an id) and **closed** (``extra="forbid"``: an unknown or misspelt field is a 422 naming it, never silently
ignored). The limits (``k <= max_k``, list lengths, id lengths, the timeout range) come from the
:class:`~serving.config.ServingConfig`, so the request models are built per config by
:func:`request_models`; the OpenAPI schema therefore shows the limits that are enforced.

External ids are JSON integers (signed 64-bit) or strings, exactly as the dataset has them: an id of the
other type is an unknown id (``"42"`` is not ``42``).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from serving.config import ServingConfig

INT64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
UNIX_S = Annotated[int, Field(ge=0, le=10**11, description="Unix seconds")]
MAX_PATH = 4096

_STRICT = ConfigDict(extra="forbid", strict=True)


@dataclasses.dataclass(frozen=True)
class RequestModels:
    """The request models for one ServingConfig."""

    HistoryEvent: type[BaseModel]
    RankRequest: type[BaseModel]
    BatchRankRequest: type[BaseModel]


def request_models(cfg: ServingConfig) -> RequestModels:
    """Build the strict request models carrying ``cfg``'s limits."""
    Id = Union[INT64, Annotated[str, StringConstraints(min_length=1, max_length=cfg.max_id_length)]]
    Key = Annotated[str, StringConstraints(min_length=1, max_length=64)]
    Scalar = Union[bool, INT64, float, Annotated[str, StringConstraints(max_length=cfg.max_id_length)], None]
    Timeout = Annotated[float, Field(ge=cfg.min_timeout_ms, le=cfg.max_timeout_ms,
                                     description="this request's time budget in milliseconds "
                                                 f"(default {cfg.budget_ms:g}); also at least the served "
                                                 "model's measured floor (GET /readyz: min_timeout_ms), else 422")]

    class HistoryEvent(BaseModel):
        """One past engagement of the user: the item and, optionally, when (Unix seconds)."""

        model_config = _STRICT
        item_id: Id
        timestamp: UNIX_S | None = Field(None, description="when it happened; without it the event's time is "
                                         "unknown (time-derived features take their missing-value path)")

    class RankRequest(BaseModel):
        """Rank the catalogue for one user.

        The service is stateless: the user's history comes from the caller (``history``, oldest first, as
        item ids or ``{"item_id", "timestamp"}`` events); without it the user has an empty history. Unknown
        users with an empty history are served by the fallback (popularity) and flagged ``cold_start``.
        Unknown item ids in ``history`` / ``exclude_item_ids`` are ignored. Items in ``exclude_item_ids`` are
        never returned (nor, with the engine's ``exclude_seen``, items of the history).
        """

        model_config = _STRICT
        user_id: Id
        k: int = Field(min(10, cfg.max_k), ge=1, le=cfg.max_k, description="number of items to return")
        context: Annotated[dict[Key, Scalar], Field(max_length=cfg.max_context)] = Field(
            default_factory=dict, description="request context columns of the dataset, e.g. hour, device")
        history: Annotated[list[Union[Id, HistoryEvent]], Field(max_length=cfg.max_history)] = Field(
            default_factory=list, description="the user's latest engagements, oldest first (sorted by time "
                                              "when every event has a timestamp)")
        exclude_item_ids: Annotated[list[Id], Field(max_length=cfg.max_exclude)] = Field(
            default_factory=list, description="items never to return")
        timestamp: UNIX_S | None = Field(None, description="request time (default: now)")
        debug: bool = Field(False, description="add per-stage scores of every item and the funnel sizes")
        timeout_ms: Timeout | None = None

    class BatchRankRequest(BaseModel):
        """Several rank requests answered by one batched engine call; the budget is the smallest
        ``timeout_ms`` given (batch-level or per request), default ``budget_ms``."""

        model_config = _STRICT
        requests: Annotated[list[RankRequest], Field(min_length=1, max_length=cfg.max_batch)]
        timeout_ms: Timeout | None = None

    return RequestModels(HistoryEvent, RankRequest, BatchRankRequest)


class ReloadRequest(BaseModel):
    """Load another bundle (a version folder or a bundle folder: its ``latest``); default: the served
    bundle folder again (picks up a moved ``latest``)."""

    model_config = _STRICT
    path: Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATH)] | None = None


# --------------------------------------------------------------------------------------------------------
# Responses (built as plain dicts on the hot path; these models document them and tests validate against them)
# --------------------------------------------------------------------------------------------------------


class RankedItem(BaseModel):
    item_id: int | str
    score: float | None = Field(description="the final stage's score (null when it has none)")
    scores: dict[str, float | None] | None = Field(
        None, description="the score every stage / task gave the item (e.g. prerank, rank, p_click, p_like)")


class DebugInfo(BaseModel):
    candidates: dict[str, int] = Field(description="candidates each stage passed on")
    known_user: bool
    ignored_history_items: int = Field(description="history items unknown to the model (ignored)")
    ignored_exclude_items: int = Field(description="excluded items unknown to the model (ignored)")


class RankResponse(BaseModel):
    request_id: str
    user_id: int | str
    items: list[RankedItem]
    model_version: str
    degraded: list[str] = Field(description='e.g. "cold_start", "prerank:deadline", "prerank:timeout"')
    timings_ms: dict[str, float]
    debug: DebugInfo | None = None


class BatchRankResponse(BaseModel):
    request_id: str
    model_version: str
    responses: list[RankResponse]
    timings_ms: dict[str, float]


class ErrorResponse(BaseModel):
    error: str = Field(description="machine-readable code, e.g. invalid_request, overloaded, deadline_exceeded")
    message: str
    request_id: str
    detail: list[dict[str, Any]] | None = Field(None, description="422: one entry per invalid field (loc, msg)")


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    status: Literal["ready", "loading", "failed"]
    model_version: str | None = None
    min_timeout_ms: float | None = Field(None, description="the smallest timeout_ms the served model accepts")
    message: str | None = None


class ReloadResponse(BaseModel):
    status: Literal["reloaded", "unchanged"]
    model_version: str
    previous_version: str | None
    load_ms: float
