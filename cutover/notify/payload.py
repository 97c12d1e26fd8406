"""What a webhook receives for one journal event: a JSON body, or Slack's ``{"text": …}``.

Pure functions of the cutover record and the event. Every field is decided by the event (or by
the record's parts that no longer change once the event happened: colors, plan, and the stage
of a finished or rolling-back cutover), so a resend after a restart carries the same body as
the first try and a receiver can de-duplicate on ``id`` alone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from cutover.config import NOTIFY_EVENTS
from cutover.core.model import Cutover, Event

__all__ = ["NOTIFIED", "Format", "body", "event_id", "payload", "text"]

Format = Literal["json", "slack"]

#: Journal event kinds a webhook can be sent (each webhook's ``events:``, by default all of
#: them; see :data:`cutover.config.NOTIFY_EVENTS`). Other kinds stay in the journal and the
#: status page.
NOTIFIED = frozenset(NOTIFY_EVENTS)

#: Kinds whose stage is the record's: it no longer moves once they happened (a bake is
#: after the last stage).
_STAGE_OF_RECORD = frozenset({"baking", "completed", "rolled_back", "failed"})
#: The new color's share after these kinds (``failed``: not verified, so unknown; a refused
#: start moved nothing; a bake holds the last stage's 100).
_SHARE_AFTER = {"started": 0, "baking": 100, "completed": 100, "rolled_back": 0, "refused": 0}

_ICON = {
    "started": ":rocket:",
    "stage_applied": ":arrow_forward:",
    "approval_needed": ":raised_hand:",
    "paused": ":double_vertical_bar:",
    "resumed": ":arrow_forward:",
    "drift": ":warning:",
    "alarm": ":rotating_light:",
    "baking": ":hourglass_flowing_sand:",
    "completed": ":white_check_mark:",
    "rolled_back": ":rotating_light:",
    "failed": ":sos:",
    "refused": ":no_entry:",
}


def event_id(cutover_id: str, seq: int) -> str:
    """The event's id, unique per state store: the cutover id and the journal ``seq``."""
    return f"{cutover_id}:{seq}"


def _stage(c: Cutover, e: Event) -> int | None:
    stage = e.data.get("stage")
    if isinstance(stage, int):
        return stage
    return c.stage_index if e.kind in _STAGE_OF_RECORD else None


def _share(c: Cutover, e: Event, stage: int | None) -> int | None:
    share = e.data.get("share")
    if isinstance(share, int):
        return share
    if e.kind == "approval_needed" and stage is not None:
        return c.plan.stages[stage].weight
    return _SHARE_AFTER.get(e.kind)


def body(c: Cutover, e: Event) -> dict[str, Any]:
    """The JSON body (``format: json``). ``stage`` is the 0-based index, as in the API."""
    stage = _stage(c, e)
    reason = e.data.get("reason")
    return {
        "id": event_id(c.id, e.seq),
        "event": e.kind,
        "service": c.service,
        "cutover": c.id,
        "kind": c.kind,
        "from": c.from_color,
        "to": c.to_color,
        "stage": stage,
        "stages": len(c.plan.stages),
        "share": _share(c, e, stage),
        "reason": reason if isinstance(reason, str) else None,
        "message": e.message,
        "at": datetime.fromtimestamp(e.at, UTC).isoformat(timespec="milliseconds"),
    }


def text(c: Cutover, e: Event) -> str:
    """One Slack ``mrkdwn`` line (``format: slack``), with the event id for de-duplication."""
    icon = _ICON.get(e.kind, ":information_source:")
    return (
        f"{icon} *{c.service}* {c.from_color} → {c.to_color}: {e.message} "
        f"(`{event_id(c.id, e.seq)}`)"
    )


def payload(c: Cutover, e: Event, fmt: Format) -> dict[str, Any]:
    return {"text": text(c, e)} if fmt == "slack" else body(c, e)
