"""The API's shapes, defined once (PRODUCT.md, HTTP API; DESIGN.md habit 13).

These models are the published schema: :mod:`cutover.api.openapi` generates its components from
them, the CLI and ``cutover watch`` read answers through them, and the tests hold what
:mod:`cutover.api.views` encodes to them. Answers forbid fields the models do not declare, so a
field the daemon sends but the spec does not name fails the tests, as does a required field the
daemon does not send. Field names are the ones users' scripts depend on; ``from`` is a Python
keyword, hence the alias.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from cutover.core.model import Color, Phase, Status, Verdict

__all__ = [
    "Check",
    "CheckMeasurement",
    "Cutover",
    "Error",
    "ErrorDetail",
    "Event",
    "History",
    "ProbeStatus",
    "PromoteRequest",
    "ResumeRequest",
    "Router",
    "Service",
    "ServiceList",
    "StageSpec",
    "component_schemas",
]


class _Shape(BaseModel):
    """An answer or a request body: exactly the fields declared, read by their JSON names."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ErrorDetail(_Shape):
    code: str
    message: str


class Error(_Shape):
    """Every refusal: a 4xx (or 503 from /readyz) with a code a script can test."""

    error: ErrorDetail


class ProbeStatus(_Shape):
    status: str


class Event(_Shape):
    seq: int
    kind: str
    at: float
    message: str
    data: dict[str, Any]


class StageSpec(_Shape):
    weight: int = Field(description="the new color's share at this stage, percent")
    hold: float = Field(description="seconds of monitored time before the next stage")
    approval: bool
    approval_timeout: float | None


class Router(_Shape):
    name: str
    type: str
    desired: int = Field(description="new color's share, percent")
    observed: float | None = Field(description="share read back")
    detail: str
    drift: bool
    error: str
    ttl: float = Field(description="DNS TTL in seconds; 0 for load balancers")
    clients_from: float | None = Field(
        description="DNS: the earliest wall time every client can follow our last verified "
        "write (written at + TTL); null for load balancers"
    )


class CheckMeasurement(_Shape):
    verdict: Verdict
    value: float | None
    at: float


class Check(_Shape):
    name: str
    status: Verdict | None = Field(description="the latest measurement's verdict")
    value: float | None
    detail: str
    at: float | None
    counting: bool | None
    failures_in_window: int
    failure_limit: int | None
    dry_run: bool
    history: list[CheckMeasurement] = Field(
        default_factory=list,
        description="recent measurements, oldest first; not in GET /v1/services",
    )


class Cutover(_Shape):
    id: str
    service: str
    kind: Literal["cutover", "undo"]
    from_: Color = Field(alias="from")
    to: Color
    state: Status = Field(
        description="refused: a start (or undo) that preflight refused, kept in history with "
        "its reason; nothing moved. An undo runs as a rollback of the cutover it undoes (same "
        "from/to): rolling_back, then rolled_back (from is live again) or failed (still "
        "retrying)"
    )
    phase: Phase = Field(
        description="baking: after the last stage's hold, at 100 % with every check running "
        "for the service's bake"
    )
    stage: int
    stages: list[StageSpec]
    hold_elapsed: float
    ttl_wait: float = Field(
        description="seconds of a lowered DNS TTL waited out before stage 1 (0: none)"
    )
    ttl_wait_left: float
    bake: float = Field(description="the plan's bake in seconds (0: none)")
    bake_left: float = Field(
        description="seconds of the bake still to run (all of it before it starts)"
    )
    routers: list[Router]
    checks: list[Check]
    reason: str | None
    store_error: str | None = Field(
        description="why the state store cannot take this cutover's latest transition (disk "
        "full, read-only, database lost); null while it is written. A rollback is acted on "
        "meanwhile; nothing moves toward the new color"
    )
    created_at: float
    updated_at: float
    finished_at: float | None
    revision: int
    events: list[Event] = Field(
        default_factory=list,
        description="the event timeline, oldest first: in GET /v1/cutovers/{id} and GET "
        "/v1/services/{service}, not in lists",
    )


class Service(_Shape):
    name: str
    live: Color
    cutover: Cutover | None = Field(description="the running or last cutover; null: none yet")


class ServiceList(_Shape):
    services: list[Service]


class History(_Shape):
    service: str
    cutovers: list[Cutover] = Field(description="newest first")


class ResumeRequest(_Shape):
    reapply: bool = Field(
        default=False,
        description="write the current stage to every router again, over what a drifted "
        "router holds",
    )


class PromoteRequest(_Shape):
    force: bool = Field(
        default=False,
        description="promote although checks are not passing (the event says so)",
    )


#: Every shape the spec names, each under its class name.
_COMPONENTS: tuple[type[BaseModel], ...] = (
    Error,
    ProbeStatus,
    ServiceList,
    Service,
    History,
    Cutover,
    ResumeRequest,
    PromoteRequest,
)


def component_schemas() -> dict[str, Any]:
    """The OpenAPI ``components.schemas``: every model and the models they hold, by name."""
    _, top = models_json_schema(
        [(model, "serialization") for model in _COMPONENTS],
        ref_template="#/components/schemas/{model}",
    )
    return dict(top.get("$defs", {}))
