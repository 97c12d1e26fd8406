"""JSON shapes of the API (PRODUCT.md, HTTP API): the names users' scripts depend on.

The status endpoints are polled, and at a thousand services ``GET /v1/services`` is megabytes
of JSON: encoding it on every request blocked the event loop the engine's rollbacks share
(docs/performance.md, issue 7). So what is cached is the *encoded* answer, per cutover, in a
:class:`StatusViews` owned by the app:

* A cutover is immutable and its runner replaces it on each step, so its JSON is encoded once
  per object (checked by identity) and answers join those bytes. The full form and the list's
  brief form (no check history) are each encoded only when an answer needs them.
* A cutover equal to the cached one (read again from the store) is not encoded again. One
  that differs, if only in its clocks, is: splicing new clock values into the cached bytes
  was measured against re-encoding and against orjson and msgspec (docs/performance.md,
  "Status answers") and dropped as not worth its code.
* The event timeline is append-only and written only together with a new revision of the
  cutover (:class:`cutover.store.base.StateStore`), so a cutover whose revision has not changed
  since its events were read needs no store read, and a changed one reads only the events after
  the last ``seq`` seen.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cutover.core.model import Cutover, Event, Phase
from cutover.store.base import StateStore

__all__ = ["LIST_MAX_AGE", "LIST_STALE_MAX_AGE", "Listing", "StatusViews", "history_json"]

#: Seconds a built ``GET /v1/services`` answer is served before the list is built again (an
#: API write rebuilds it at once). Polled at hundreds of requests a second over a thousand
#: services, building per request took the event loop's time from the engine.
LIST_MAX_AGE = 0.25
#: Up to this age, the last list is still served while the next is built; an older one waits
#: for the build. So no answer is older than this, however rarely the list is asked for.
LIST_STALE_MAX_AGE = 2 * LIST_MAX_AGE

#: Compact separators: fewer bytes to send and to gzip for every poller. ``ensure_ascii`` (the
#: default) keeps every byte ASCII, so the answer is valid UTF-8 whatever a detail contains.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _bytes(value: Any) -> bytes:
    return _encode(value).encode()


def _event_json(e: Event) -> bytes:
    return _bytes({"seq": e.seq, "kind": e.kind, "at": e.at, "message": e.message, "data": e.data})


def _ttl_wait_left(c: Cutover) -> float:
    if c.phase is not Phase.PREFLIGHT:
        return 0.0
    return max(0.0, c.ttl_wait - c.stage_elapsed)


def _bake_left(c: Cutover) -> float:
    """Seconds of the bake still to run (all of it before the bake starts)."""
    return max(0.0, c.plan.bake - (c.bake_elapsed or 0.0))


@dataclass(slots=True, kw_only=True)
class _Entry:
    """One cutover's encoded JSON, each form built by the first answer that needs it: the full
    form (``GET /v1/cutovers/{id}``, ``GET /v1/services/{service}``), the brief form (the list)
    and the events part."""

    cutover: Cutover  # the cutover encoded
    full: bytes | None = None
    brief: bytes | None = None
    events: bytes = b""  # the encoded events, comma-separated, oldest first
    events_seq: int = 0  # the last seq in ``events``
    events_revision: int | None = None  # the cutover's revision when the store was last asked


@dataclass(slots=True, kw_only=True)
class Listing:
    """One built ``GET /v1/services`` answer and its validator."""

    body: bytes
    etag: str  # a strong validator: the same tag never names other bytes in this process
    built_at: float  # the daemon clock's monotonic time
    writes: int  # :attr:`StatusViews.writes` when it was built
    gzipped: bytes | None = None  # ``body`` gzip-compressed, once a client accepted it


class StatusViews:
    """Encoded JSON of the cutovers recently answered about, least recently used dropped past
    ``max_entries``. One per app; answers must not be mutated (they are ``bytes``)."""

    def __init__(self, *, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._heads: dict[tuple[str, str], bytes] = {}  # (service, live) -> its object's start
        self._listing: Listing | None = None
        self._listings = 0  # lists built with new bytes: the ETag's counter
        # tags of one process never meet another's: a restarted daemon numbers from 1 again
        self._tag = os.urandom(6).hex()
        #: API writes (start, undo, commands) answered; a list built before one is stale.
        self.writes = 0

    def listing(self, now: float, *, max_age: float = LIST_MAX_AGE) -> Listing | None:
        """The last built list if at monotonic ``now`` it is younger than ``max_age`` and was
        built after every API write."""
        last = self._listing
        if last is None or last.writes != self.writes or now - last.built_at >= max_age:
            return None
        return last

    def build_listing(
        self, services: Iterable[tuple[str, str, bytes | None]], now: float
    ) -> Listing:
        """Build the list from (name, live color, :meth:`brief` of the cutover) and keep it. An
        answer equal to the last one keeps its ETag (and its compressed form)."""
        body = self.services(services)
        last = self._listing
        if last is not None and last.body == body:
            last.built_at, last.writes = now, self.writes
            return last
        self._listings += 1
        etag = f"{self._tag}-{self._listings}"
        self._listing = Listing(body=body, etag=etag, built_at=now, writes=self.writes)
        return self._listing

    def services(self, services: Iterable[tuple[str, str, bytes | None]]) -> bytes:
        """The answer of ``GET /v1/services`` from (name, live color, encoded cutover)."""
        parts = [b'{"services":[']
        for i, (name, live, cutover) in enumerate(services):
            parts += (b"," if i else b"", self._head(name, live), cutover or b"null", b"}")
        parts.append(b"]}")
        return b"".join(parts)

    def service(self, name: str, live: str, cutover: bytes | None) -> bytes:
        """The answer of ``GET /v1/services/{service}``."""
        return b"".join((self._head(name, live), cutover or b"null", b"}"))

    def cutover(self, c: Cutover) -> bytes:
        """The cutover's JSON without its event timeline."""
        entry = self._entry(c)
        if entry.full is None:
            entry.full = _bytes(_body(c, history=True))
        return entry.full

    def brief(self, c: Cutover) -> bytes:
        """What ``GET /v1/services`` lists of a cutover: its JSON without the event timeline and
        without each check's ``history`` (both are in ``GET /v1/cutovers/{id}``): the
        histories would be most of the list's bytes, and a poller of the fleet needs none."""
        entry = self._entry(c)
        if entry.brief is None:
            entry.brief = _bytes(_body(c, history=False))
        return entry.brief

    async def cutover_with_events(self, c: Cutover, store: StateStore) -> bytes:
        """The cutover's JSON with its event timeline, as ``GET /v1/cutovers/{id}`` answers."""
        entry = self._entry(c)
        if entry.events_revision != c.revision:
            read = await store.events(c.id, after_seq=entry.events_seq)
            # a concurrent answer may have added some of them while this one waited
            fresh = [e for e in read if e.seq > entry.events_seq]
            if fresh:
                encoded = [_event_json(e) for e in fresh]
                entry.events = b",".join([entry.events, *encoded] if entry.events else encoded)
                entry.events_seq = fresh[-1].seq
            entry.events_revision = c.revision
        # the body again: the cutover may have been re-encoded by another answer meanwhile
        body = self.cutover(c)
        return b"".join((body[:-1], b',"events":[', entry.events, b"]}"))

    def _head(self, name: str, live: str) -> bytes:
        head = self._heads.get((name, live))
        if head is None:
            if len(self._heads) >= self._max:
                self._heads.clear()
            head = _encode({"name": name, "live": live})[:-1].encode() + b',"cutover":'
            self._heads[name, live] = head
        return head

    def _entry(self, c: Cutover) -> _Entry:
        entry = self._entries.get(c.id)
        if entry is None or (entry.cutover is not c and entry.cutover != c):
            new = _Entry(cutover=c)
            if entry is not None:  # the timeline read so far stays valid: it only grows
                new.events, new.events_seq = entry.events, entry.events_seq
                new.events_revision = entry.events_revision
            entry = self._entries[c.id] = new
        entry.cutover = c
        self._entries.move_to_end(c.id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return entry


def history_json(service: str, cutovers: Iterable[bytes]) -> bytes:
    """The answer of ``GET /v1/services/{service}/cutovers`` from encoded cutovers."""
    return b'{"service":' + _bytes(service) + b',"cutovers":[' + b",".join(cutovers) + b"]}"


def _body(c: Cutover, *, history: bool = True) -> dict[str, Any]:
    """The cutover's JSON in the answer's key order (:class:`cutover.api.models.Cutover`).
    ``history=False``: without each check's ``history``."""
    policies = {p.name: p for p in c.plan.checks}
    checks = [
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
            **(
                {
                    "history": [
                        {"verdict": m.verdict.value, "value": m.value, "at": m.at}
                        for m in s.history
                    ]
                }
                if history
                else {}
            ),
        }
        for s in c.checks
    ]
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
        "bake": c.plan.bake,
        "bake_left": round(_bake_left(c), 3),
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
        "checks": checks,
        "reason": c.reason,
        # null unless the state store cannot take its latest transition (PRODUCT.md)
        "store_error": c.store_error or None,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "finished_at": c.finished_at,
        "revision": c.revision,
    }
