"""Refused starts are kept (PRODUCT.md): a start (or an undo) that preflight refused is stored
in the service's history with state ``refused`` and its reason, so that a refusal in a pipeline
at 3 a.m. can be read the next morning in ``cutover history``. Nothing moved, so the record is
terminal from the start and never has a runner.
"""

from __future__ import annotations

from cutover.core.machine import Step
from cutover.core.model import Cutover, Event, Status, evolve

__all__ = ["refused"]


def refused(c: Cutover, *, reason: str, actor: str, now: float) -> Step:
    """``c``, the record the start would have created, as refused for ``reason``."""
    c = evolve(
        c,
        status=Status.REFUSED,
        reason=reason,
        finished_at=now,
        updated_at=now,
        # nothing was written, and what a router read is in the reason if it mattered
        routers=tuple(evolve(r, observed=None, written=None, detail="") for r in c.routers),
    )
    verb = "undo" if c.kind == "undo" else "cutover"
    event = Event(
        kind="refused",
        message=f"{verb} of {c.service} from {c.from_color} to {c.to_color} asked by {actor} "
        f"was refused; no traffic moved: {reason}",
        at=now,
        data={"actor": actor, "reason": reason},
    )
    return Step(cutover=c, events=(event,))
