"""JSON shapes of the API (PRODUCT.md, HTTP API): the names users' scripts depend on."""

from __future__ import annotations

from typing import Any

from cutover.core.model import Cutover, Event, Phase

__all__ = ["cutover_json", "event_json"]


def event_json(e: Event) -> dict[str, Any]:
    return {"seq": e.seq, "kind": e.kind, "at": e.at, "message": e.message, "data": e.data}


def _ttl_wait_left(c: Cutover) -> float:
    if c.phase is not Phase.PREFLIGHT:
        return 0.0
    return max(0.0, c.ttl_wait - c.stage_elapsed)


def cutover_json(c: Cutover, events: list[Event] | None = None) -> dict[str, Any]:
    policies = {p.name: p for p in c.plan.checks}
    body: dict[str, Any] = {
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
    if events is not None:
        body["events"] = [event_json(e) for e in events]
    return body
