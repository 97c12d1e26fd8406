"""JSON shapes of the API (PRODUCT.md, HTTP API): the names users' scripts depend on.

A cutover is immutable and a runner replaces it on every step, so its body is built once per
object and reused until the next step (keyed by the cutover id, checked by identity): a status
poller or ``GET /v1/services`` over many services then serializes only what changed
(docs/performance.md). Callers must not mutate a returned body.
"""

from __future__ import annotations

from typing import Any

from cutover.core.model import Cutover, Event, Phase

__all__ = ["cutover_json", "event_json"]

#: Bodies of the cutovers last serialized, by id; cleared when it outgrows this.
_BODIES_MAX = 4096
_bodies: dict[str, tuple[Cutover, dict[str, Any]]] = {}


def event_json(e: Event) -> dict[str, Any]:
    return {"seq": e.seq, "kind": e.kind, "at": e.at, "message": e.message, "data": e.data}


def _ttl_wait_left(c: Cutover) -> float:
    if c.phase is not Phase.PREFLIGHT:
        return 0.0
    return max(0.0, c.ttl_wait - c.stage_elapsed)


def cutover_json(c: Cutover, events: list[Event] | None = None) -> dict[str, Any]:
    cached = _bodies.get(c.id)
    if cached is None or cached[0] is not c:
        if len(_bodies) >= _BODIES_MAX:
            _bodies.clear()
        cached = _bodies[c.id] = (c, _body(c))
    body = cached[1]
    if events is None:
        return body
    return {**body, "events": [event_json(e) for e in events]}


def _body(c: Cutover) -> dict[str, Any]:
    policies = {p.name: p for p in c.plan.checks}
    return {
        "id": c.id,
        "service": c.service,
        "kind": c.kind,
        "from": c.from_color,
        "to": c.to_color,
        "state": c.status.value,
        "phase": c.phase.value,
        "stage": c.stage_index,
        "stages": [
            {
                "weight": s.weight,
                "hold": s.hold,
                "approval": s.approval,
                "approval_timeout": s.approval_timeout,
            }
            for s in c.plan.stages
        ],
        "hold_elapsed": round(c.hold_elapsed, 3),
        "ttl_wait": c.ttl_wait,
        "ttl_wait_left": round(_ttl_wait_left(c), 3),
        "routers": [
            {
                "name": r.name,
                "type": r.kind,
                "desired": r.desired,
                "observed": r.observed,
                "detail": r.detail,
                "drift": r.drift,
                "error": r.error,
                "ttl": r.ttl,
                "clients_from": (
                    r.written_at + r.ttl if r.ttl > 0 and r.written_at is not None else None
                ),
            }
            for r in c.routers
        ],
        "checks": [
            {
                "name": s.name,
                "status": s.last.verdict.value if s.last else None,
                "value": s.last.value if s.last else None,
                "detail": s.last.detail if s.last else "",
                "at": s.last.at if s.last else None,
                "counting": s.last.counting if s.last else None,
                "failures_in_window": s.failures_in_window,
                "failure_limit": policies[s.name].failure_limit if s.name in policies else None,
                "dry_run": policies[s.name].dry_run if s.name in policies else False,
                "history": [
                    {"verdict": m.verdict.value, "value": m.value, "at": m.at} for m in s.history
                ],
            }
            for s in c.checks
        ],
        "reason": c.reason,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "finished_at": c.finished_at,
        "revision": c.revision,
    }
